package ui

import (
	"context"
	"image/color"
	"path/filepath"
	"testing"

	"atelier/core/request"

	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The feature sections through the real runner, bridge and worker (tiny parts).

func TestRealFeaturesFromTheSections(t *testing.T) {
	s, store := realStudio(t)
	x := s.form
	in := t.TempDir()
	control := writePNG(t, in, "control.png", 96, 48, color.White) // another size: resized by the worker
	setForm(s, "a lighthouse", 3, 64, 64)
	x.lora.addRow(request.LoRA{Path: request.TinyLoRA, Weight: 0.5})
	cn := x.controlNet.addRow(request.DefaultControlNet())
	cn.image.SetText(control)
	x.vae.vae.SetText(request.TinyVAE)
	x.hires.scale.SetText("1.5")
	x.batch.batchCount.SetText("2")

	test.Tap(s.generate)
	s.waitFor(t, 2*jobDeadline, "two jobs to finish", func() bool { return s.job == nil })
	require.Equal(t, statusDone, s.status.kind, "status: %s", s.status.text.Text)
	assert.Len(t, x.controlNet.images.Objects, 1, "the control image the ControlNet saw is shown")
	assert.True(t, x.controlNet.imagesTitle.Visible())

	jobs, err := store.ListJobs(context.Background(), 10)
	require.NoError(t, err)
	require.Len(t, jobs, 2, "batch count 2 ran two jobs")
	for _, j := range jobs {
		assert.Equal(t, []request.LoRA{{Path: request.TinyLoRA, Weight: 0.5}}, j.Request.LoRAs)
		require.Len(t, j.Request.ControlNets, 1)
		assert.Equal(t, control, j.Request.ControlNets[0].Image)
		assert.Equal(t, request.TinyVAE, j.Request.VAE)
		assert.Equal(t, 1.5, j.Request.HiresScale)
		require.Len(t, j.Images, 1)
		assert.Equal(t, [2]int{96, 96}, [2]int{j.Images[0].Width, j.Images[0].Height}, "the hires pass enlarged 64 px by 1.5")
	}
	assert.Equal(t, jobs[1].Request.Seed+1, jobs[0].Request.Seed, "the second job starts at seed + batch size")

	// The capabilities of the worker that ran the jobs now build the choices.
	caps := shared.bridge.Capabilities()
	require.NotNil(t, caps)
	assert.Equal(t, schedulerLabels(caps.Schedulers), s.form.sampling.scheduler.Options)
}

func TestRealWorkerErrorIsShownBesideTheRow(t *testing.T) {
	s, _ := realStudio(t)
	x := s.form
	setForm(s, "a lighthouse", 3, 64, 64)
	x.lora.addRow(request.LoRA{Path: request.TinyLoRA, Weight: 1})
	x.lora.addRow(request.LoRA{Path: filepath.Join(t.TempDir(), "missing.safetensors"), Weight: 1})
	test.Tap(s.generate)
	s.waitFor(t, jobDeadline, "the refusal", func() bool { return s.job == nil })
	assert.Contains(t, s.form.fieldError("loras[1].path"), "missing.safetensors")
	assert.Empty(t, s.form.fieldError("loras[0].path"))
}

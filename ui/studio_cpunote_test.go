package ui

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/protocol"
)

func TestRealStudioNotesASizeThatTakesMinutesAStepOnTheCPU(t *testing.T) {
	t.Setenv("ATELIER_DEVICE", "cpu") // where this check applies, whatever the machine has
	s, st := realStudio(t)
	settled := func() bool { return s.cpuNoteShown() }
	setForm(s, "a lighthouse", 4, 64, 64)
	s.waitFor(t, time.Minute, "the form's check", settled)
	assert.False(t, s.cpu.area.Visible(), "the tiny model's test size gets no note")

	// The history says this model crawls on this CPU (2000 s to denoise four
	// 64 × 64 steps): the form's size is noted before anything runs.
	ctx := context.Background()
	req, verr := s.form.request()
	require.Nil(t, verr)
	require.NoError(t, req.Prepare())
	id, err := st.CreateJob(ctx, "slow-job", req)
	require.NoError(t, err)
	require.NoError(t, st.FinishJob(ctx, id, &protocol.Metrics{TotalS: 2001, DenoiseS: 2000, ItS: 0.002, Device: "cpu", Dtype: "float32"},
		[]protocol.ImageResult{{Path: filepath.Join(t.TempDir(), "slow.png"), Seed: 1, Width: 64, Height: 64}}))
	s.form.steps.steps.SetText("5")
	s.waitFor(t, time.Minute, "the form's check", settled)
	require.True(t, s.cpu.area.Visible(), "a note under Generate")
	assert.Contains(t, s.cpu.text.Text, "64 × 64 on the CPU takes about ")
	assert.Contains(t, s.cpu.text.Text, "minutes a step")
	assert.Contains(t, s.cpu.text.Text, "; use a GPU or a smaller size (measured in an earlier job of this model on the CPU).")
	assert.Nil(t, s.win.Canvas().Overlays().Top(), "a note, not a dialog")
	assert.False(t, s.generate.Disabled(), "Generate still works")
	assert.Equal(t, 1, jobCount(t, st), "nothing ran")

	// A form that cannot run gets the field's error on Generate, not this note.
	s.form.steps.steps.SetText("0")
	s.waitFor(t, time.Minute, "the form's check", settled)
	assert.False(t, s.cpu.area.Visible())
}

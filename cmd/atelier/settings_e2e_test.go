package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/settings"
	"atelier/core/store"
)

// saveSettings stores s in the home's history, as the Settings window does.
func (h *home) saveSettings(s settings.Settings) {
	h.t.Helper()
	st, err := store.OpenStore(filepath.Join(h.dir, "data", "atelier.db"))
	require.NoError(h.t, err)
	defer st.Close()
	require.NoError(h.t, settings.Save(context.Background(), st, s))
}

// lastSpeed is the speed settings the newest job ran with.
func (h *home) lastSpeed() map[string]string {
	h.t.Helper()
	jobs := h.history()
	require.NotEmpty(h.t, jobs)
	require.NotNil(h.t, jobs[0].Metrics, "job %d: %s", jobs[0].ID, jobs[0].ErrorMessage)
	return jobs[0].Metrics.Speed
}

// TestGenerateAndQueueRunHonourTheSettings: the stored speed mode and output
// folder apply to generate and queue run; a flag wins over them, and a
// variable of the environment over both.
func TestGenerateAndQueueRunHonourTheSettings(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	out := t.TempDir()
	h.saveSettings(settings.Settings{Speed: settings.SpeedLowVRAM, Device: "cpu", OutputFolder: out})

	stdout, errOut, code := h.run(tinyArgs...)
	require.Equal(t, 0, code, errOut)
	assert.True(t, strings.HasPrefix(strings.TrimSpace(stdout), out+string(filepath.Separator)),
		"the image is in the settings' output folder: %s", stdout)
	sp := h.lastSpeed()
	assert.Equal(t, "on", sp["vae_tiling"], "stored low VRAM")
	assert.Equal(t, "on", sp["vae_slicing"])

	_, errOut, code = h.run(append(tinyArgs, "--speed", "balanced")...)
	require.Equal(t, 0, code, errOut)
	assert.Equal(t, "off", h.lastSpeed()["vae_tiling"], "the flag wins over the stored mode")

	_, errOut, code = h.runEnv([]string{"ATELIER_VAE_TILING=0"}, tinyArgs...)
	require.Equal(t, 0, code, errOut)
	sp = h.lastSpeed()
	assert.Equal(t, "off", sp["vae_tiling"], "the environment wins over the mode's variable")
	assert.Equal(t, "on", sp["vae_slicing"], "and the mode sets the others")

	_, errOut, code = h.run("queue", "add", "--model", "tiny", "--prompt", "a queued fox", "--steps", "2",
		"--width", "64", "--height", "64", "--seed", "3")
	require.Equal(t, 0, code, errOut)
	_, errOut, code = h.run("queue", "run")
	require.Equal(t, 0, code, errOut)
	jobs := h.history()
	require.Equal(t, "a queued fox", jobs[0].Request.Prompt)
	require.Equal(t, store.StatusDone, jobs[0].Status, jobs[0].ErrorMessage)
	assert.Equal(t, "on", jobs[0].Metrics.Speed["vae_tiling"], "queue run takes the stored mode too")
	require.Len(t, jobs[0].Images, 1)
	assert.True(t, strings.HasPrefix(jobs[0].Images[0].Path, out), "and the output folder")

	stdout, errOut, code = h.run("doctor")
	require.Equal(t, 0, code, stdout+errOut)
	assert.Contains(t, stdout, "settings: device cpu (settings), speed low-vram (settings)", "doctor starts the worker as the app would")
}

func TestSettingsFlagsRefuseBadValues(t *testing.T) {
	h := newHome(t)
	_, errOut, code := h.run(append(tinyArgs, "--device", "gpu")...)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, `invalid --device: "gpu" is not a device: use auto, cpu, mps, cuda or cuda:N`)
	_, errOut, code = h.run(append(tinyArgs, "--speed", "turbo")...)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, `invalid --speed: "turbo" is not a speed mode: use fast, balanced or low-vram`)
	_, errOut, code = h.run("queue", "run", "--ray", "saved")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "--ray saved: no Ray address is saved")
	assert.Empty(t, h.history(), "nothing was recorded")
}

// A device this machine lacks is the first thing said, not a crash that
// points at missing modules. CUDA_VISIBLE_DEVICES="" hides every GPU, so a
// machine with CUDA sees none either.
func TestGenerateOnAMissingCUDADeviceSaysSoFirst(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	_, errOut, code := h.runEnv([]string{"CUDA_VISIBLE_DEVICES="}, append(tinyArgs, "--device", "cuda")...)
	assert.Equal(t, exitFailure, code, errOut)
	var first string
	for _, l := range strings.Split(errOut, "\n") {
		if strings.HasPrefix(l, "atelier generate:") {
			first = l
			break
		}
	}
	assert.Contains(t, first, "atelier generate: the job failed: unsupported: CUDA was asked for but this machine's torch sees no CUDA GPU: torch ")
	assert.Contains(t, first, "use --device cpu or auto")
	assert.NotContains(t, errOut, "missing module")
	jobs := h.history()
	require.Len(t, jobs, 1)
	assert.Equal(t, string(failure.ErrUnsupported), jobs[0].ErrorCode)
}

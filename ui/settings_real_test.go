package ui

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/bridge"
	"atelier/core/jobs"
	"atelier/core/settings"
)

// TestRealSettingsRestartTheWorkerBetweenJobs changes the speed mode in the
// Settings window while the real worker runs a job: the job ends on the
// worker it started on, and the next job runs on a new worker with the mode's
// settings.
func TestRealSettingsRestartTheWorkerBetweenJobs(t *testing.T) {
	sharedBridge(t) // the environment check, and the tiny model's cache
	br := bridge.New(bridge.Config{CacheDir: shared.cache, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	t.Cleanup(func() { br.Close() })
	// The first worker's steps each wait (up to 10 minutes, cut short by a
	// cancel) after their progress, so the job is surely running when the
	// settings change. The window's settings replace this, so the next
	// worker does not wait.
	br.Reconfigure("", []string{"ATELIER_TEST_STEP_DELAY_S=600"})
	st, dirs := newSettingsStore(t)
	runner := jobs.NewRunner(st, br, dirs)
	s, _ := settingsStudio(t, br, nil, runner, st, dirs, nil)

	setForm(s, "a lighthouse at dusk", 3, 64, 64)
	test.Tap(s.generate)
	s.waitFor(t, jobDeadline, "the job's first step", func() bool {
		if s.job == nil {
			return false
		}
		snap, _ := s.job.snapshot()
		return snap.Stage == "denoising" && snap.Step >= 1
	})
	started := br.WorkersStarted()
	_, gen := br.Generation()

	sw := openedSettings(t, s)
	assert.Regexp(t, `^cpu · .+`, sw.device.Options[len(sw.device.Options)-1], "the worker's own devices are offered")
	sw.speed.SetSelected("Low VRAM")
	saveAndWait(t, s, sw)
	assert.Equal(t, settings.SpeedLowVRAM, stored(t, st).Speed, "the mode is stored")
	assert.Equal(t, savedRestartLater, sw.status.Text, "the window says the worker restarts after the job")
	_, now := br.Generation()
	assert.Equal(t, gen, now, "the worker that runs the job is still the one")
	assert.Equal(t, started, br.WorkersStarted(), "no worker was started mid-job")
	require.NotNil(t, s.job, "the job still runs")

	test.Tap(s.cancel) // ends the step's wait; the worker itself ends the job
	s.waitFor(t, jobDeadline, "the job to end", func() bool { return s.job == nil })
	all, err := st.ListJobs(context.Background(), 1)
	require.NoError(t, err)
	assert.Equal(t, "cancelled", all[0].Status, "the worker ended the job itself (%s)", all[0].ErrorMessage)

	test.Tap(s.generate)
	s.waitFor(t, jobDeadline, "the next job", func() bool { return s.job == nil })
	require.Equal(t, statusDone, s.status.kind, "status: %s", s.status.text.Text)
	all, err = st.ListJobs(context.Background(), 1)
	require.NoError(t, err)
	require.NotNil(t, all[0].Metrics)
	assert.Equal(t, "on", all[0].Metrics.Speed["vae_tiling"], "the new worker has the low-VRAM settings")
	assert.Equal(t, "on", all[0].Metrics.Speed["vae_slicing"])
	assert.Equal(t, started+1, br.WorkersStarted(), "one new worker, after the job")
	settingsGen, workerGen := br.Generation()
	assert.Equal(t, settingsGen, workerGen)
}

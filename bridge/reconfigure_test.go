package bridge

import (
	"context"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/protocol"
)

// TestRealReconfigureWaitsForTheJob changes the worker's settings in the middle
// of a job on the real worker: the job ends on the worker it started on, and the
// next job runs on a new worker that has the new settings.
func TestRealReconfigureWaitsForTheJob(t *testing.T) {
	b := newRealBridge(t)
	// Every step of the first worker waits (up to 10 minutes, cut short by a
	// cancel) after its progress: the job is surely in flight when the settings change.
	changed, afterJob := b.Reconfigure("", []string{"ATELIER_TEST_STEP_DELAY_S=600"})
	assert.True(t, changed)
	assert.False(t, afterJob, "no worker yet: nothing to wait for")

	ctx, cancel := context.WithTimeout(context.Background(), realTimeout)
	defer cancel()
	jobCtx, cancelJob := context.WithCancel(ctx)
	defer cancelJob()
	ch, err := b.Submit(jobCtx, "reconf-1", realRequest(t, 3))
	require.NoError(t, err)
	var msgs []seen
	pid := 0
	for msg := range ch {
		m := seenOf(msg)
		msgs = append(msgs, m)
		if m.Type == protocol.MsgProgress && m.Stage == "denoising" && pid == 0 {
			pid = b.pid()
			require.NotZero(t, pid)
			changed, afterJob = b.Reconfigure("", []string{"ATELIER_VAE_TILING=1"})
			assert.True(t, changed)
			assert.True(t, afterJob, "a job is in flight: the restart waits for it")
			assert.Equal(t, pid, b.pid(), "the worker keeps running its job")
			require.NoError(t, syscall.Kill(pid, 0), "the worker is alive mid-job")
			settings, worker := b.Generation()
			assert.Equal(t, settings-1, worker, "the running worker has the older settings")
			cancelJob() // ends the step's wait; the worker itself ends the job
		}
	}
	final := finalOf(t, "reconf-1", msgs)
	require.Equal(t, protocol.MsgError, final.Type, "%v", types(msgs))
	assert.Equal(t, failure.ErrCancelled, final.Code, "the worker ended the job itself: it was not stopped under it")
	waitGone(t, pid, realTimeout)

	next := realRequest(t, 2)
	final, _ = runJob(t, b, "reconf-2", next)
	requireResult(t, final, next)
	assert.NotEqual(t, pid, b.pid(), "a new worker ran the next job")
	require.NotNil(t, final.Metrics)
	assert.Equal(t, "on", final.Metrics.Speed["vae_tiling"], "the new worker has the new settings")
	settings, worker := b.Generation()
	assert.Equal(t, settings, worker)

	// The same settings again change nothing and keep the worker.
	pid = b.pid()
	changed, _ = b.Reconfigure("", []string{"ATELIER_VAE_TILING=1"})
	assert.False(t, changed)
	assert.Equal(t, pid, b.pid())
	// New settings with the worker idle: it stops at once, and the next start has them.
	started := b.WorkersStarted()
	changed, afterJob = b.Reconfigure("", nil)
	assert.True(t, changed)
	assert.False(t, afterJob)
	waitGone(t, pid, realTimeout)
	require.NoError(t, b.Start(ctx))
	assert.Equal(t, started+1, b.WorkersStarted())
	final, _ = runJob(t, b, "reconf-3", next)
	requireResult(t, final, next)
	assert.Equal(t, "off", final.Metrics.Speed["vae_tiling"])
}

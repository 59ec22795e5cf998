//go:build linux

package main

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/jobs"
	"atelier/core/settings"
	"atelier/core/store"
)

// TestStudioQueueRunsOnTheSavedRayCluster: with a Ray address in the
// settings, the studio's queue runner (studioQueue, as runStudio makes it)
// runs the queue's jobs on the cluster's actors, and `queue run --ray saved`
// uses the same address.
func TestStudioQueueRunsOnTheSavedRayCluster(t *testing.T) {
	addr := startRayHead(t)
	h := newHome(t)
	h.saveSettings(settings.Settings{RayAddress: addr})
	first := h.queueAdd("a lighthouse on the saved cluster", 2)

	t.Setenv("ATELIER_HOME", h.dir)
	a, err := openApp(io.Discard)
	require.NoError(t, err)
	defer a.close()
	q, out, note, closeQueue := studioQueue(context.Background(), a, io.Discard)
	defer closeQueue()
	assert.Contains(t, note, "runs on the Ray cluster at "+addr+" (2 actor(s))")
	assert.Len(t, out, 3, "an output folder set in the window reaches the app's runner and both actors' runners")
	var mu sync.Mutex
	slots := map[int64]string{}
	q.OnEvent = func(e jobs.QueueEvent) {
		if e.Kind == jobs.QueueFinished {
			mu.Lock()
			slots[e.Job.ID] = e.Slot
			mu.Unlock()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	require.NoError(t, q.Run(ctx, true))
	mu.Lock()
	assert.True(t, strings.HasPrefix(slots[first], "ray"), "an actor ran it: slot %q", slots[first])
	mu.Unlock()
	job, err := a.store.GetJob(context.Background(), first)
	require.NoError(t, err)
	assert.Equal(t, store.StatusDone, job.Status, job.ErrorMessage)

	second := h.queueAdd("a second lighthouse", 2)
	_, errOut, code := h.run("queue", "run", "--ray", "saved")
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, errOut, "Ray cluster at "+addr)
	assert.Equal(t, store.StatusDone, h.queue()[second].Status)
}

// TestStudioQueueStaysLocalWhenTheSavedClusterIsUnreachable: the studio opens
// with its queue on the app's worker and says why.
func TestStudioQueueStaysLocalWhenTheSavedClusterIsUnreachable(t *testing.T) {
	requireWorker(t)
	if err := exec.Command(os.Getenv("ATELIER_PYTHON"), "-c", "import ray").Run(); err != nil {
		t.Skip("Ray is not installed in the worker's venv: `make venv-ray` installs it (make test does)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	h := newHome(t)
	h.saveSettings(settings.Settings{RayAddress: addr})
	t.Setenv("ATELIER_HOME", h.dir)
	a, err := openApp(io.Discard)
	require.NoError(t, err)
	defer a.close()
	var stderr strings.Builder
	q, out, note, closeQueue := studioQueue(context.Background(), a, &stderr)
	defer closeQueue()
	require.NotNil(t, q)
	assert.Len(t, out, 1, "only the app's runner")
	assert.Contains(t, note, "The Ray cluster at "+addr+" cannot be used, so the queue runs on this machine")
	assert.Contains(t, stderr.String(), "cannot be used")
}

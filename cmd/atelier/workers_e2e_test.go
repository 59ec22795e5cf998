//go:build linux

package main

// End-to-end tests of "queue run --workers N": several real workers (tiny
// model, CPU) feeding from one real history, with kill -9 of one of them.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/store"
)

func TestQueueRunWithTwoWorkersRunsEveryJobOnceAndSurvivesAKilledWorker(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	// Eight jobs: seven short and one long enough to be killed mid-job.
	var ids []int64
	for i := range 8 {
		steps := 3
		if i == 2 {
			steps = 150
		}
		ids = append(ids, h.queueAdd("job "+strconv.Itoa(i), steps))
	}
	long := ids[2]

	run := startQueueRun(t, h, "--workers", "2")
	s := run.until(t, "start of the long job", func(e runEvent) bool { return e.Type == "job_started" && e.JobID == long })
	run.denoising(t, s.UID)
	// The runner records the worker's pid before the job's first step.
	var victim int
	for _, j := range h.history() {
		if j.ID == long {
			require.NotNil(t, j.RanOn, "a running job records where it runs")
			victim = j.RanOn.WorkerPID
		}
	}
	require.NotZero(t, victim)
	workers := workerPIDs(run.cmd.Process.Pid)
	assert.Contains(t, workers, victim, "the recorded pid is one of this run's workers")
	require.NoError(t, syscall.Kill(victim, syscall.SIGKILL))
	f := run.until(t, "the end of the killed job", func(e runEvent) bool { return e.Type == "job_finished" && e.JobID == long })
	require.NotNil(t, f.Error)
	assert.Equal(t, string(failure.ErrWorkerCrashed), f.Error.Code)
	assert.Equal(t, store.StatusInterrupted, f.Status, "a crashed job goes back to the queue")

	evs, code := run.rest(t)
	require.Equal(t, 0, code, "stderr:\n%s", run.stderr)
	starts := map[int64]int{}
	slots := map[string]bool{}
	for _, e := range append(run.seen, evs...) {
		if e.Type == "job_started" {
			starts[e.JobID]++
			slots[e.Slot] = true
		}
	}
	for _, id := range ids {
		want := 1
		if id == long {
			want = 2 // the first run was killed; it re-ran once more
		}
		assert.Equal(t, want, starts[id], "job %d starts", id)
	}
	assert.Len(t, slots, 2, "both workers took jobs")

	q := h.queue()
	imgs := h.imagesOf()
	pids := map[int]bool{}
	for _, j := range h.history() {
		require.NotNil(t, j.RanOn, "job %d records where it ran", j.ID)
		assert.Equal(t, "cpu", j.RanOn.Device)
		assert.NotEmpty(t, j.RanOn.Host)
		pids[j.RanOn.WorkerPID] = true
		if j.ID == long {
			assert.NotEqual(t, victim, j.RanOn.WorkerPID, "the re-run ran on a live worker")
		}
	}
	for _, id := range ids {
		assert.Equal(t, store.StatusDone, q[id].Status, "job %d", id)
		assert.Equal(t, 1, imgs[id], "job %d has exactly one image", id)
	}
	assert.Equal(t, 2, q[long].Attempts)
	assert.GreaterOrEqual(t, len(pids), 2, "two workers ran the jobs")
	assert.Len(t, h.images(), 8, "one file per job: nothing ran twice")
	h.checkIntegrity()
}

func TestPinnedJobsRunOnlyOnTheirDevice(t *testing.T) {
	h := newHome(t)
	_, stderr, code := h.run("queue", "add", "--prompt", "x", "--device", "gpu1")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, `device "gpu1"`)
	assert.Contains(t, stderr, "cuda:N")

	bad := filepath.Join(t.TempDir(), "bad.jsonl")
	require.NoError(t, os.WriteFile(bad, []byte(`{"prompt": "x", "device": "cuda:-1"}`+"\n"), 0o644))
	_, stderr, code = h.run("queue", "add", "--file", bad)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "line 1")
	assert.Contains(t, stderr, `"device"`)
	assert.Empty(t, h.queue(), "bad devices queue nothing")

	out, stderr, code := h.run("queue", "add", "--prompt", "x", "--steps", "2", "--width", "64", "--height", "64",
		"--device", "cuda:1", "--batch-count", "2", "--json")
	require.Equal(t, 0, code, stderr)
	var pinned []int64
	require.NoError(t, json.Unmarshal([]byte(out), &pinned))
	for _, id := range pinned {
		assert.Equal(t, "cuda:1", h.queue()[id].PinnedDevice)
	}
	// CPU workers serve no cuda:1: nothing runs (no worker even starts),
	// the jobs stay pending and unspent, and the run says why.
	_, stderr, code = h.run("queue", "run", "--workers", "2")
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, stderr, "2 job(s) pinned to cuda:1 stay queued")
	for _, id := range pinned {
		j := h.queue()[id]
		assert.Equal(t, store.StatusPending, j.Status)
		assert.Zero(t, j.Attempts)
	}
	_, stderr, code = h.run("queue", "run", "--workers", "0")
	assert.Equal(t, 0, code, "0 is the default: one worker per GPU, one without; stderr:\n%s", stderr)
	_, stderr, code = h.run("queue", "run", "--workers", "999")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "--workers 999")
}

// A batch count is N queue jobs at consecutive seeds (A1111's seed + k ×
// batch size), so N workers share it: 8 images over 2 CPU workers, each made
// once, at its own seed.
func TestABatchCountSpreadsOverTheWorkers(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	out, stderr, code := h.run("queue", "add", "--model", "tiny", "--prompt", "a batch", "--steps", "2",
		"--width", "64", "--height", "64", "--seed", "100", "--batch-count", "8", "--json")
	require.Equal(t, 0, code, stderr)
	var ids []int64
	require.NoError(t, json.Unmarshal([]byte(out), &ids), out)
	require.Len(t, ids, 8, "a batch count of 8 is 8 jobs")

	run := startQueueRun(t, h, "--workers", "2")
	evs, code := run.rest(t)
	require.Equal(t, 0, code, "stderr:\n%s", run.stderr)
	starts := map[int64]int{}
	slots := map[string]int{}
	for _, e := range evs {
		if e.Type == "job_started" {
			starts[e.JobID]++
			slots[e.Slot]++
		}
	}
	// Each slot claims its first job before its worker starts, so both take
	// one whatever the speed of either.
	assert.Len(t, slots, 2, "both workers took part of the batch: %v", slots)

	q := h.queue()
	seeds := map[int64]int{}
	pids := map[int]bool{}
	for _, j := range h.history() {
		require.Len(t, j.Images, 1, "job %d", j.ID)
		seeds[j.Images[0].Seed]++
		require.NotNil(t, j.RanOn)
		pids[j.RanOn.WorkerPID] = true
	}
	for k, id := range ids {
		assert.Equal(t, 1, starts[id], "job %d ran once", id)
		assert.Equal(t, store.StatusDone, q[id].Status, "job %d", id)
		assert.Equal(t, 1, seeds[int64(100+k)], "seed %d made once", 100+k)
	}
	assert.Len(t, pids, 2, "two worker processes made the images")
	assert.Len(t, h.images(), 8)
	h.checkIntegrity()
}

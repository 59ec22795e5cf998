//go:build linux

package main

// End-to-end tests of Ctrl-C in a terminal, which sends SIGINT to the whole
// foreground process group: the CLI's, not only the CLI. The worker is out of
// its reach, so the CLI cancels the job and stops the worker itself.

import (
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/store"
)

// inOwnGroup makes cmd lead a process group of its own, as a shell does with a
// foreground job, so that ctrlC reaches it and its children but not the test.
func inOwnGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// ctrlC sends SIGINT to the process group of cmd, as a terminal does on Ctrl-C.
func ctrlC(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	pgid := pgidOf(t, cmd.Process.Pid)
	require.Equal(t, cmd.Process.Pid, pgid, "the CLI must lead its own process group (inOwnGroup)")
	require.NoError(t, syscall.Kill(-pgid, syscall.SIGINT))
}

func pgidOf(t *testing.T, pid int) int {
	t.Helper()
	pgid, err := syscall.Getpgid(pid)
	require.NoError(t, err)
	return pgid
}

// groupMembers lists the live processes of process group pgid.
func groupMembers(pgid int) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// After the command name: state, ppid, pgrp.
		if f, ok := procStatFields(pid); ok && len(f) > 2 && f[2] == strconv.Itoa(pgid) && processRuns(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestCtrlCCancelsTheJob(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	j := startLongJob(t, h)
	workerGroup := pgidOf(t, j.worker)
	assert.NotEqual(t, pgidOf(t, j.cmd.Process.Pid), workerGroup, "the worker must be out of the terminal's reach")

	ctrlC(t, j.cmd)
	code, rest := j.wait(t)
	stderr := j.stderr.String()
	assert.Equal(t, exitCancelled, code, "stderr:\n%s", stderr)
	assert.Contains(t, stderr, "cancelled; the job is recorded as cancelled")
	assert.NotContains(t, stderr, string(failure.ErrWorkerCrashed))
	require.NotEmpty(t, rest)
	var done doneLine
	require.NoError(t, json.Unmarshal([]byte(rest[len(rest)-1]), &done), rest[len(rest)-1])
	require.NotNil(t, done.Error)
	assert.Equal(t, failure.ErrCancelled, done.Error.Code)

	jobs := h.history()
	require.Len(t, jobs, 1)
	assert.Equal(t, store.StatusCancelled, jobs[0].Status)
	assert.Equal(t, string(failure.ErrCancelled), jobs[0].ErrorCode)
	// The CLI stops its worker before it exits.
	assert.False(t, processRuns(j.worker), "the worker (pid %d) outlived the CLI", j.worker)
	assert.Empty(t, groupMembers(workerGroup), "processes of the worker's group outlived the CLI")
}

func TestCtrlCPutsTheQueueJobBack(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	// No reruns after a crash: a Ctrl-C taken for one would fail the job at once.
	_, errOut, code := h.run("queue", "retries", "0")
	require.Equal(t, 0, code, errOut)
	a := h.queueAdd("long, stopped twice", 150)
	b := h.queueAdd("short", 3)

	for stop := 1; stop <= 2; stop++ {
		run := startQueueRun(t, h)
		s := run.until(t, "start of the long job", func(e runEvent) bool { return e.Type == "job_started" && e.JobID == a })
		assert.Equal(t, 1, s.Attempts, "stop %d: an earlier Ctrl-C spent no attempt", stop)
		run.denoising(t, s.UID)
		workers := workerPIDs(run.cmd.Process.Pid)
		require.Len(t, workers, 1)
		workerGroup := pgidOf(t, workers[0])

		ctrlC(t, run.cmd)
		evs, code := run.rest(t)
		stderr := run.stderr.String()
		assert.Equal(t, exitCancelled, code, "stop %d: stderr:\n%s", stop, stderr)
		assert.Contains(t, stderr, "stopped; it is pending again")
		assert.NotContains(t, stderr, "worker crashed")
		var finished *runEvent
		for i, e := range evs {
			if e.Type == "job_finished" && e.JobID == a {
				finished = &evs[i]
			}
		}
		require.NotNil(t, finished, "stop %d: no job_finished for the stopped job; stderr:\n%s", stop, stderr)
		assert.Equal(t, store.StatusPending, finished.Status)
		assert.NotContains(t, started(evs), b, "a stopped run starts no other job")

		q := h.queue()
		assert.Equal(t, store.StatusPending, q[a].Status, "stop %d", stop)
		assert.Equal(t, 0, q[a].Attempts, "stop %d: a Ctrl-C does not spend the retry budget", stop)
		assert.Equal(t, store.StatusPending, q[b].Status)
		assert.False(t, processRuns(workers[0]), "the worker (pid %d) outlived the queue runner", workers[0])
		assert.Empty(t, groupMembers(workerGroup), "processes of the worker's group outlived the queue runner")
	}

	run := startQueueRun(t, h)
	evs, code := run.rest(t)
	require.Equal(t, 0, code, "stderr:\n%s", run.stderr)
	assert.Equal(t, []int64{a, b}, started(evs), "the stopped job runs first")
	q := h.queue()
	for _, id := range []int64{a, b} {
		assert.Equal(t, store.StatusDone, q[id].Status, "job %d", id)
		assert.Equal(t, 1, q[id].Attempts, "job %d", id)
	}
	assert.Equal(t, map[int64]int{a: 1, b: 1}, h.imagesOf())
	h.checkIntegrity()
}

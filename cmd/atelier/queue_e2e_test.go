//go:build linux

package main

// End-to-end tests of the queue: the real binary, bridge, Python worker (tiny
// model) and SQLite file, with kill -9 of the queue runner and of the worker.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/protocol"
	"atelier/core/store"
)

// queueAdd queues one tiny job and returns its id.
func (h *home) queueAdd(prompt string, steps int) int64 {
	h.t.Helper()
	out, errOut, code := h.run("queue", "add", "--model", "tiny", "--prompt", prompt, "--steps", strconv.Itoa(steps),
		"--width", "64", "--height", "64", "--seed", "3", "--json")
	require.Equal(h.t, 0, code, errOut)
	var ids []int64
	require.NoError(h.t, json.Unmarshal([]byte(out), &ids), out)
	require.Len(h.t, ids, 1)
	return ids[0]
}

type queueListing struct {
	Jobs []struct {
		store.QueueJob
		ETAS *float64 `json:"eta_s"`
	} `json:"jobs"`
	Paused bool `json:"paused"`
}

func (h *home) queue() map[int64]store.QueueJob {
	h.t.Helper()
	out, errOut, code := h.run("queue", "list", "--json")
	require.Equal(h.t, 0, code, errOut)
	var l queueListing
	require.NoError(h.t, json.Unmarshal([]byte(out), &l), out)
	m := map[int64]store.QueueJob{}
	for _, j := range l.Jobs {
		m[j.ID] = j.QueueJob
	}
	return m
}

// runEvent is one --json line of "queue run": our own lines and the worker's.
type runEvent struct {
	Type     string `json:"type"`
	Slot     string `json:"slot"`
	JobID    int64  `json:"job_id"`
	UID      string `json:"uid"`
	ID       string `json:"id"` // worker messages
	Status   string `json:"status"`
	Attempts int    `json:"attempts"`
	Stage    string `json:"stage"`
	Step     int    `json:"step"`
	OK       bool   `json:"ok"`
	Error    *struct {
		Code   string `json:"code"`
		Detail string `json:"detail"`
	} `json:"error"`
}

// runningQueue is a running "atelier queue run --json", in a process group of its
// own as a shell starts a foreground job.
type runningQueue struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	events chan runEvent
	seen   []runEvent // what until has read, in order
}

func startQueueRun(t *testing.T, h *home, extra ...string) *runningQueue {
	t.Helper()
	cmd := h.command(context.Background(), append([]string{"queue", "run", "--json"}, extra...)...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	r := &runningQueue{cmd: cmd, stderr: &bytes.Buffer{}, events: make(chan runEvent, 4096)}
	cmd.Stderr = r.stderr
	inOwnGroup(cmd)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var e runEvent
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				r.events <- e
			}
		}
		close(r.events)
	}()
	return r
}

// until reads events until match returns true, and returns that event.
func (r *runningQueue) until(t *testing.T, what string, match func(runEvent) bool) runEvent {
	t.Helper()
	deadline := time.After(4 * time.Minute)
	for {
		select {
		case e, ok := <-r.events:
			require.True(t, ok, "queue run ended before %s; stderr:\n%s", what, r.stderr)
			r.seen = append(r.seen, e)
			if match(e) {
				return e
			}
		case <-deadline:
			t.Fatalf("no %s within 4 minutes; stderr:\n%s", what, r.stderr)
		}
	}
}

// denoising waits until the worker is denoising job uid.
func (r *runningQueue) denoising(t *testing.T, uid string) {
	t.Helper()
	r.until(t, "denoising of "+uid, func(e runEvent) bool {
		return e.Type == protocol.MsgProgress && e.ID == uid && e.Stage == "denoising" && e.Step >= 1
	})
}

// rest reads the remaining events and waits for the process to exit.
func (r *runningQueue) rest(t *testing.T) ([]runEvent, int) {
	t.Helper()
	var evs []runEvent
	for e := range r.events {
		evs = append(evs, e)
	}
	err := r.cmd.Wait()
	if err == nil {
		return evs, 0
	}
	exit, ok := err.(*exec.ExitError)
	require.True(t, ok, err)
	if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return evs, -int(ws.Signal())
	}
	return evs, exit.ExitCode()
}

func started(evs []runEvent) []int64 {
	var ids []int64
	for _, e := range evs {
		if e.Type == "job_started" {
			ids = append(ids, e.JobID)
		}
	}
	return ids
}

func (h *home) checkIntegrity() {
	h.t.Helper()
	s, err := store.OpenStore(filepath.Join(h.dir, "data", "atelier.db"))
	require.NoError(h.t, err)
	defer s.Close()
	v, err := s.IntegrityCheck(context.Background())
	require.NoError(h.t, err)
	assert.Equal(h.t, "ok", v, "PRAGMA integrity_check")
}

// imagesOf returns the history's images of each job.
func (h *home) imagesOf() map[int64]int {
	h.t.Helper()
	n := map[int64]int{}
	for _, j := range h.history() {
		n[j.ID] = len(j.Images)
	}
	return n
}

func TestQueueRunKilledMidJobResumesExactlyOnce(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	a := h.queueAdd("first, short", 3)
	b := h.queueAdd("second, long", 150)
	c := h.queueAdd("third", 3)
	d := h.queueAdd("fourth", 3)

	run := startQueueRun(t, h)
	run.until(t, "job a done", func(e runEvent) bool {
		return e.Type == "job_finished" && e.JobID == a && e.Status == store.StatusDone
	})
	sb := run.until(t, "job b started", func(e runEvent) bool { return e.Type == "job_started" && e.JobID == b })
	run.denoising(t, sb.UID)
	workers := workerPIDs(run.cmd.Process.Pid)
	require.Len(t, workers, 1)
	require.NoError(t, run.cmd.Process.Signal(syscall.SIGKILL))
	_, code := run.rest(t)
	require.Equal(t, -int(syscall.SIGKILL), code)
	deadline := time.Now().Add(30 * time.Second)
	for processRuns(workers[0]) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	assert.False(t, processRuns(workers[0]), "the worker outlived the killed queue runner")

	// The next start marks the job interrupted; the rest waits.
	q := h.queue()
	assert.Equal(t, store.StatusDone, q[a].Status)
	assert.Equal(t, store.StatusInterrupted, q[b].Status)
	assert.Equal(t, 1, q[b].Attempts)
	assert.Equal(t, store.StatusPending, q[c].Status)
	assert.Equal(t, store.StatusPending, q[d].Status)
	h.checkIntegrity()

	run = startQueueRun(t, h)
	evs, code := run.rest(t)
	require.Equal(t, 0, code, "stderr:\n%s", run.stderr)
	assert.Equal(t, []int64{b, c, d}, started(evs), "the interrupted job re-runs first, the done one never")

	q = h.queue()
	for _, id := range []int64{a, b, c, d} {
		assert.Equal(t, store.StatusDone, q[id].Status, "job %d", id)
	}
	assert.Equal(t, 2, q[b].Attempts, "the interrupted job ran exactly once more")
	assert.Equal(t, 1, q[c].Attempts)
	imgs := h.imagesOf()
	for _, id := range []int64{a, b, c, d} {
		assert.Equal(t, 1, imgs[id], "job %d must have exactly one image", id)
	}
	assert.Len(t, h.images(), 4, "one file per job: the re-run wrote the interrupted job's file once")
	h.checkIntegrity()

	// A third run has nothing to do.
	run = startQueueRun(t, h)
	evs, code = run.rest(t)
	require.Equal(t, 0, code)
	assert.Empty(t, started(evs))
}

func TestQueueWorkerKilledMidJobRerunsOnceAndFailsTheSecondTime(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	a := h.queueAdd("first, short", 3)
	b := h.queueAdd("crashes once", 150)
	c := h.queueAdd("crashes twice", 150)
	d := h.queueAdd("last", 3)

	run := startQueueRun(t, h)
	killWorkerDuring := func(id int64, attempt int) {
		t.Helper()
		s := run.until(t, "start of job "+strconv.FormatInt(id, 10), func(e runEvent) bool {
			return e.Type == "job_started" && e.JobID == id
		})
		require.Equal(t, attempt, s.Attempts)
		run.denoising(t, s.UID)
		workers := workerPIDs(run.cmd.Process.Pid)
		require.Len(t, workers, 1)
		require.NoError(t, syscall.Kill(workers[0], syscall.SIGKILL))
		f := run.until(t, "end of job "+strconv.FormatInt(id, 10), func(e runEvent) bool {
			return e.Type == "job_finished" && e.JobID == id
		})
		require.NotNil(t, f.Error)
		assert.Equal(t, string(failure.ErrWorkerCrashed), f.Error.Code)
	}
	killWorkerDuring(b, 1)
	killWorkerDuring(c, 1)
	killWorkerDuring(c, 2)
	evs, code := run.rest(t)
	assert.Equal(t, exitFailure, code, "a failed job makes the run fail; stderr:\n%s", run.stderr)
	assert.Equal(t, []int64{d}, started(evs), "after the failure the queue goes on")

	q := h.queue()
	assert.Equal(t, store.StatusDone, q[a].Status)
	assert.Equal(t, store.StatusDone, q[b].Status, "the job re-run after one crash completes")
	assert.Equal(t, 2, q[b].Attempts)
	assert.Equal(t, store.StatusFailed, q[c].Status, "a job that crashes the worker twice fails, so it cannot loop")
	assert.Equal(t, string(failure.ErrWorkerCrashed), q[c].ErrorCode)
	assert.Equal(t, 2, q[c].Attempts)
	assert.Equal(t, store.StatusDone, q[d].Status)
	imgs := h.imagesOf()
	assert.Equal(t, map[int64]int{a: 1, b: 1, c: 0, d: 1}, imgs)
	h.checkIntegrity()
}

func TestQueueCLI(t *testing.T) {
	h := newHome(t)
	// Invalid input queues nothing and names the flag.
	_, stderr, code := h.run("queue", "add", "--prompt", "x", "--steps", "0")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "--steps")

	out, stderr, code := h.run("queue", "add", "--prompt", "a lighthouse", "--steps", "4", "--width", "64",
		"--height", "64", "--seed", "10", "--batch-count", "3", "--session", "evening", "--json")
	require.Equal(t, 0, code, stderr)
	var ids []int64
	require.NoError(t, json.Unmarshal([]byte(out), &ids))
	require.Len(t, ids, 3)
	q := h.queue()
	assert.Equal(t, int64(10), q[ids[0]].Request.Seed)
	assert.Equal(t, int64(12), q[ids[2]].Request.Seed, "batch count steps the seed")

	jobs := filepath.Join(t.TempDir(), "jobs.jsonl")
	require.NoError(t, os.WriteFile(jobs, []byte(`{"prompt": "from a file", "steps": 2, "width": 64, "height": 64, "seed": 1}
# comments and blank lines are skipped

{"prompt": "twice", "steps": 2, "width": 64, "height": 64, "seed": 5, "batch_count": 2}
`), 0o644))
	out, stderr, code = h.run("queue", "add", "--file", jobs, "--json")
	require.Equal(t, 0, code, stderr)
	var fileIDs []int64
	require.NoError(t, json.Unmarshal([]byte(out), &fileIDs))
	assert.Len(t, fileIDs, 3)

	bad := filepath.Join(t.TempDir(), "bad.jsonl")
	require.NoError(t, os.WriteFile(bad, []byte("{\"prompt\": \"ok\"}\n{\"prompt\": \"\"}\nnot json\n"), 0o644))
	_, stderr, code = h.run("queue", "add", "--file", bad)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "line 2")
	assert.Contains(t, stderr, "line 3")
	assert.Len(t, h.queue(), 6, "a bad file queues nothing")

	// No worker: the run fails, and every job stays queued, unspent.
	cmd := h.command(context.Background(), "queue", "run")
	cmd.Env = append(cmd.Env, "ATELIER_PYTHON="+filepath.Join(t.TempDir(), "no-python"), "ATELIER_WORKER_DIR="+t.TempDir())
	var errBuf bytes.Buffer
	cmd.Stderr = &errBuf
	err := cmd.Run()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	assert.Equal(t, exitFailure, exit.ExitCode())
	assert.Contains(t, errBuf.String(), "stay queued")
	for _, id := range append(ids, fileIDs...) {
		j := h.queue()[id]
		assert.Equal(t, store.StatusPending, j.Status, "job %d", id)
		assert.Zero(t, j.Attempts, "job %d", id)
	}

	_, _, code = h.run("queue", "cancel", strconv.FormatInt(ids[1], 10))
	require.Equal(t, 0, code)
	out, _, code = h.run("queue", "retry", strconv.FormatInt(ids[1], 10))
	require.Equal(t, 0, code)
	assert.Contains(t, out, "queued again")
	_, stderr, code = h.run("queue", "retry", strconv.FormatInt(ids[0], 10))
	assert.Equal(t, exitFailure, code, "a pending job cannot be retried")
	assert.Contains(t, stderr, "only failed, cancelled or interrupted")
	_, stderr, code = h.run("queue", "cancel", "9999")
	assert.Equal(t, exitUsage, code, stderr)

	_, _, code = h.run("queue", "pause")
	require.Equal(t, 0, code)
	table, _, code := h.run("queue", "list")
	require.Equal(t, 0, code)
	assert.Contains(t, table, "PAUSED")
	assert.Contains(t, table, "cancelled")
	// A paused queue runs nothing (no worker needed to see that).
	_, stderr, code = h.run("queue", "run")
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, stderr, "paused")
	_, _, code = h.run("queue", "resume")
	require.Equal(t, 0, code)

	out, _, code = h.run("queue", "clear")
	require.Equal(t, 0, code)
	assert.Contains(t, out, "1 jobs cleared")
	_, _, code = h.run("queue", "clear", "--all")
	require.Equal(t, 0, code)
	for _, j := range h.queue() {
		assert.NotEqual(t, store.StatusPending, j.Status)
	}

	out, _, code = h.run("queue", "sessions", "--json")
	require.Equal(t, 0, code)
	var sessions []store.Session
	require.NoError(t, json.Unmarshal([]byte(out), &sessions))
	require.Len(t, sessions, 2)
	assert.Equal(t, "jobs.jsonl", sessions[0].Name)
	assert.Equal(t, store.SessionFile, sessions[0].Source)
	assert.Equal(t, "evening", sessions[1].Name)
	assert.Equal(t, 4, sessions[1].Jobs, "three jobs and the retry")

	out, _, code = h.run("queue", "retries", "2")
	require.Equal(t, 0, code)
	assert.Equal(t, "2\n", out)
}

func TestAControlCharacterInAPromptIsRefusedNamingTheField(t *testing.T) {
	h := newHome(t)
	jobs := filepath.Join(t.TempDir(), "jobs.jsonl")
	require.NoError(t, os.WriteFile(jobs, []byte(`{"prompt": "fine", "steps": 2, "width": 64, "height": 64}
{"prompt": "a light\u0000house", "steps": 2, "width": 64, "height": 64}
`), 0o644))
	_, stderr, code := h.run("queue", "add", "--file", jobs)
	assert.Equal(t, exitUsage, code, stderr)
	assert.Contains(t, stderr, "line 2")
	assert.Contains(t, stderr, "prompt")
	assert.Contains(t, stderr, "U+0000")
	assert.Empty(t, h.queue(), "a bad file queues nothing")

	_, stderr, code = h.run("queue", "add", "--prompt", "a lighthouse", "--negative", "fog\x1b[31m")
	assert.Equal(t, exitUsage, code, stderr)
	assert.Contains(t, stderr, "--negative")
	assert.Contains(t, stderr, "control characters other than newline and tab")
	assert.Empty(t, h.queue())

	stdout, stderr, code := h.run("generate", "--prompt", "a\x01b", "--steps", "4", "--width", "64", "--height", "64")
	assert.Equal(t, exitUsage, code, stderr)
	assert.Contains(t, stderr, "--prompt")
	assert.Contains(t, stderr, "U+0001 at character 2")
	assert.Empty(t, stdout)
	assert.Empty(t, h.history(), "refused input leaves no job row")
	assert.Empty(t, h.images())
}

//go:build linux

package main

// End-to-end tests of one worker per device shared by several Atelier
// processes on one history (docs/architecture.md, "One worker per device"):
// the real binary, bridge, Python worker (tiny model) and SQLite file.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/protocol"
	"atelier/core/store"
)

// submitter is a running "atelier generate --json" whose lines are read as
// they come.
type submitter struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	lines  chan string
}

func startGenerate(t *testing.T, h *home, steps string, extra ...string) *submitter {
	t.Helper()
	cmd := h.command(context.Background(), append([]string{"generate", "--model", "tiny", "--prompt", "a shared worker",
		"--steps", steps, "--width", "64", "--height", "64", "--seed", "5", "--json"}, extra...)...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	g := &submitter{cmd: cmd, stderr: &bytes.Buffer{}, lines: make(chan string, 4096)}
	cmd.Stderr = g.stderr
	inOwnGroup(cmd)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			g.lines <- sc.Text()
		}
		close(g.lines)
	}()
	return g
}

// denoising waits for the submitter to show a denoising step of its job.
func (g *submitter) denoising(t *testing.T) protocol.Progress {
	t.Helper()
	deadline := time.After(4 * time.Minute)
	for {
		select {
		case line, ok := <-g.lines:
			require.True(t, ok, "generate ended before denoising; stderr:\n%s", g.stderr)
			if m, err := protocol.Decode([]byte(line)); err == nil {
				if p, ok := m.(protocol.Progress); ok && p.Stage == "denoising" && p.Step >= 1 {
					return p
				}
			}
		case <-deadline:
			t.Fatalf("no denoising step within 4 minutes; stderr:\n%s", g.stderr)
		}
	}
}

// done reads the submitter's lines to its final "done" line and waits for it
// to exit.
func (g *submitter) done(t *testing.T) (doneLine, int) {
	t.Helper()
	var d doneLine
	for line := range g.lines {
		var probe struct {
			Type string `json:"type"`
		}
		if json.Unmarshal([]byte(line), &probe) == nil && probe.Type == "done" {
			require.NoError(t, json.Unmarshal([]byte(line), &d), line)
		}
	}
	err := g.cmd.Wait()
	code := 0
	if err != nil {
		exit, ok := err.(*exec.ExitError)
		require.True(t, ok, err)
		code = exit.ExitCode()
	}
	require.Equal(t, "done", d.Type, "no done line; stderr:\n%s", g.stderr)
	return d, code
}

func (h *home) openHistory() *store.Store {
	h.t.Helper()
	s, err := store.OpenStore(filepath.Join(h.dir, "data", "atelier.db"))
	require.NoError(h.t, err)
	h.t.Cleanup(func() { s.Close() })
	return s
}

// holdsCPU waits until process pid holds the cpu lease of h's history.
func (h *home) holdsCPU(pid int) {
	h.t.Helper()
	s := h.openHistory()
	deadline := time.Now().Add(4 * time.Minute)
	for {
		l, live, err := s.DeviceLease(context.Background(), "cpu")
		require.NoError(h.t, err)
		if live && l.PID == pid {
			return
		}
		require.True(h.t, time.Now().Before(deadline), "process %d did not take the cpu lease within 4 minutes (lease %+v)", pid, l)
		time.Sleep(50 * time.Millisecond) // polling a state, not waiting for a duration
	}
}

// cancelRequested waits until the newest job of h's history is flagged for
// cancel (by its submitter).
func (h *home) cancelRequested() {
	h.t.Helper()
	s := h.openHistory()
	ctx := context.Background()
	deadline := time.Now().Add(4 * time.Minute)
	for {
		jobs, err := s.ListJobs(ctx, 1)
		require.NoError(h.t, err)
		require.NotEmpty(h.t, jobs)
		st, err := s.GetRelayState(ctx, jobs[0].ID)
		require.NoError(h.t, err)
		if st.CancelRequested || st.Finished() {
			return
		}
		require.True(h.t, time.Now().Before(deadline), "no cancel recorded within 4 minutes (%+v)", st)
		time.Sleep(50 * time.Millisecond) // polling a state, not waiting for a duration
	}
}

func TestTwoProcessesShareOneWorkerAndTheSubmitterSeesAndCancelsItsJob(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	holder := startQueueRun(t, h, "--watch")
	h.holdsCPU(holder.cmd.Process.Pid)

	// generate, while queue run holds the device: its job runs on queue
	// run's worker, and it shows the progress.
	g := startGenerate(t, h, "150")
	g.denoising(t)
	assert.Empty(t, workerPIDs(g.cmd.Process.Pid), "the submitting process must start no worker")
	workers := workerPIDs(holder.cmd.Process.Pid)
	require.Len(t, workers, 1, "the holder runs one worker")
	d, code := g.done(t)
	require.Equal(t, 0, code, g.stderr)
	require.True(t, d.OK, g.stderr)
	require.Len(t, d.Images, 1)
	assert.FileExists(t, d.Images[0].Path)

	// A second job from another generate: cancelled from it mid-job.
	g2 := startGenerate(t, h, "150")
	g2.denoising(t)
	assert.Empty(t, workerPIDs(g2.cmd.Process.Pid))
	// The worker is held still until the cancel is recorded, so that the
	// job cannot end first however fast the machine.
	require.NoError(t, syscall.Kill(workers[0], syscall.SIGSTOP))
	ctrlC(t, g2.cmd)
	h.cancelRequested()
	require.NoError(t, syscall.Kill(workers[0], syscall.SIGCONT))
	d2, code2 := g2.done(t)
	assert.NotZero(t, code2)
	require.NotNil(t, d2.Error, g2.stderr)
	assert.Equal(t, failure.ErrCancelled, d2.Error.Code)

	// One worker served both, and stays up for the next job.
	assert.Equal(t, workers, workerPIDs(holder.cmd.Process.Pid))
	jobs := h.history()
	require.Len(t, jobs, 2)
	byID := map[int64]store.JobRecord{}
	for _, j := range jobs {
		byID[j.ID] = j
	}
	assert.Equal(t, store.StatusDone, byID[d.JobID].Status)
	require.NotNil(t, byID[d.JobID].RanOn)
	assert.Equal(t, workers[0], byID[d.JobID].RanOn.WorkerPID, "the holder's worker made the image")
	for _, j := range jobs {
		if j.ID != d.JobID {
			assert.Equal(t, store.StatusCancelled, j.Status)
		}
	}
	require.NoError(t, syscall.Kill(-holder.cmd.Process.Pid, syscall.SIGINT))
	holder.rest(t)
	h.checkIntegrity()
}

func TestKill9OfTheLeaseHolderMidQueueJobIsTakenOverByTheOtherQueueRun(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	id := h.queueAdd("taken over", 150)
	a := startQueueRun(t, h)
	a.denoising(t, a.until(t, "job_started", func(e runEvent) bool { return e.Type == "job_started" }).UID)
	aw := workerPIDs(a.cmd.Process.Pid)
	require.Len(t, aw, 1)
	// Held still, the job stays mid-run until the kill (SIGKILL reaches a
	// stopped process), however fast the machine.
	require.NoError(t, syscall.Kill(aw[0], syscall.SIGSTOP))

	// The second queue run finds the device held: no worker, it waits.
	b := startQueueRun(t, h)
	b.until(t, "device_held", func(e runEvent) bool { return e.Type == "device_held" })
	assert.Empty(t, workerPIDs(b.cmd.Process.Pid))

	require.NoError(t, a.cmd.Process.Signal(syscall.SIGKILL))
	_, codeA := a.rest(t)
	require.Equal(t, -int(syscall.SIGKILL), codeA)

	// b takes the lease (and says so) and runs the interrupted job once
	// more, to the end.
	b.until(t, "device_free", func(e runEvent) bool { return e.Type == "device_free" })
	st := b.until(t, "the job's second run", func(e runEvent) bool { return e.Type == "job_started" && e.JobID == id })
	assert.Equal(t, 2, st.Attempts)
	evs, code := b.rest(t)
	require.Equal(t, 0, code, b.stderr)
	assert.Empty(t, started(evs), "nothing else runs, nothing twice")
	j := h.queue()[id]
	assert.Equal(t, store.StatusDone, j.Status)
	assert.Equal(t, 2, j.Attempts)
	assert.Len(t, h.images(), 1, "one image: the killed run left none")
	h.checkIntegrity()
}

func TestKill9OfTheLeaseHolderMidSubmittedJobRunsItInTheSubmitter(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	holder := startQueueRun(t, h, "--watch")
	h.holdsCPU(holder.cmd.Process.Pid)
	g := startGenerate(t, h, "150")
	g.denoising(t)
	hw := workerPIDs(holder.cmd.Process.Pid)
	require.Len(t, hw, 1)
	assert.Empty(t, workerPIDs(g.cmd.Process.Pid))
	require.NoError(t, syscall.Kill(hw[0], syscall.SIGSTOP)) // mid-run until the kill

	require.NoError(t, holder.cmd.Process.Signal(syscall.SIGKILL))
	holder.rest(t)

	// generate takes the device over and runs its job once more, itself.
	d, code := g.done(t)
	require.Equal(t, 0, code, g.stderr)
	require.True(t, d.OK, g.stderr)
	s := h.openHistory()
	qj, err := s.GetQueueJob(context.Background(), d.JobID)
	require.NoError(t, err)
	assert.Equal(t, store.StatusDone, qj.Status)
	assert.Equal(t, 2, qj.Attempts, "the interrupted job ran once more")
	assert.Len(t, h.history(), 1, "nothing else ran")
	assert.Len(t, h.images(), 1)
	_, live, err := s.DeviceLease(context.Background(), "cpu")
	require.NoError(t, err)
	assert.False(t, live, "generate gave the device up when it ended")
	h.checkIntegrity()
}

// exitsOnItsOwn waits for r to end by itself; a generous bound catches a
// queue run that waits for nothing (it is killed and the test fails).
func (r *runningQueue) exitsOnItsOwn(t *testing.T, what string) ([]runEvent, int) {
	t.Helper()
	ended := make(chan struct{})
	defer close(ended)
	go func() {
		select {
		case <-ended:
		case <-time.After(4 * time.Minute):
			_ = r.cmd.Process.Kill()
		}
	}()
	evs, code := r.rest(t)
	require.NotEqual(t, -int(syscall.SIGKILL), code, "%s: queue run still waited after 4 minutes; stderr:\n%s", what, r.stderr)
	return evs, code
}

func TestAWaitingQueueRunDoesNotWaitForJobsPinnedToAnotherDevice(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	holder := startQueueRun(t, h, "--watch")
	h.holdsCPU(holder.cmd.Process.Pid)

	// A job pinned to a GPU is not work for the CPU worker: a queue run
	// whose CPU is held by another process has nothing to wait for.
	out, errOut, code := h.run("queue", "add", "--model", "tiny", "--prompt", "for the GPU", "--steps", "2",
		"--width", "64", "--height", "64", "--device", "cuda:1", "--json")
	require.Equal(t, 0, code, errOut)
	var ids []int64
	require.NoError(t, json.Unmarshal([]byte(out), &ids), out)
	require.Len(t, ids, 1)

	b := startQueueRun(t, h)
	evs, code := b.exitsOnItsOwn(t, "only a job pinned to cuda:1 queued")
	require.Equal(t, 0, code, b.stderr)
	var held bool
	for _, e := range evs {
		held = held || e.Type == "device_held"
	}
	assert.True(t, held, "it saw the device held: %+v", evs)
	assert.Empty(t, started(evs))
	assert.Equal(t, store.StatusPending, h.queue()[ids[0]].Status, "the pinned job waits for its device")

	// A job it could run is work: it waits for the device, and takes the
	// job over once the holder is gone.
	id := h.queueAdd("for any device", 2)
	c := startQueueRun(t, h)
	c.until(t, "device_held", func(e runEvent) bool { return e.Type == "device_held" })
	require.NoError(t, syscall.Kill(-holder.cmd.Process.Pid, syscall.SIGINT))
	holder.rest(t)
	evs, code = c.exitsOnItsOwn(t, "the holder gone")
	require.Equal(t, 0, code, c.stderr)
	assert.Equal(t, []int64{id}, started(evs), "it ran the job it could run, and not the pinned one")
	assert.Equal(t, store.StatusDone, h.queue()[id].Status)
	assert.Equal(t, store.StatusPending, h.queue()[ids[0]].Status)
	h.checkIntegrity()
}

// submitted waits until a job other than those of not is recorded (the
// submitter's, written before anything else happens) and returns its id.
func (h *home) submitted(not ...int64) int64 {
	h.t.Helper()
	s := h.openHistory()
	deadline := time.Now().Add(4 * time.Minute)
	for {
		jobs, err := s.ListJobs(context.Background(), 1)
		require.NoError(h.t, err)
		if len(jobs) == 1 && !slices.Contains(not, jobs[0].ID) {
			return jobs[0].ID
		}
		require.True(h.t, time.Now().Before(deadline), "no submitted job within 4 minutes")
		time.Sleep(50 * time.Millisecond) // polling a state, not waiting for a duration
	}
}

func TestASubmittersValidationErrorNamesItsFieldAsALocalOneDoes(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	busy := h.queueAdd("keeps the worker busy", 150)
	holder := startQueueRun(t, h, "--watch")
	holder.denoising(t, holder.until(t, "job_started", func(e runEvent) bool { return e.Type == "job_started" }).UID)
	workers := workerPIDs(holder.cmd.Process.Pid)
	require.Len(t, workers, 1)
	// Held still, the queue job keeps the worker until the submitted job's
	// picture is gone, however fast the machine.
	require.NoError(t, syscall.Kill(workers[0], syscall.SIGSTOP))

	// The picture is there when generate checks and submits the job, and
	// gone when the holder checks it again before it runs.
	init := writeTestPNG(t, filepath.Join(t.TempDir(), "init.png"), 64, 64, false)
	g := startGenerate(t, h, "4", "--init-image", init, "--strength", "0.5")
	id := h.submitted(busy)

	// queue list shows it, marked as submitted, apart from the queue.
	out, errOut, code := h.run("queue", "list", "--json")
	require.Equal(t, 0, code, errOut)
	var listed struct {
		Jobs      []store.QueueJob     `json:"jobs"`
		Submitted []store.SubmittedJob `json:"submitted"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &listed), out)
	require.Len(t, listed.Submitted, 1, out)
	assert.Equal(t, id, listed.Submitted[0].ID)
	assert.Equal(t, "cpu", listed.Submitted[0].RunOn)
	assert.Equal(t, g.cmd.Process.Pid, listed.Submitted[0].SubmitterPID)
	assert.Equal(t, store.StatusPending, listed.Submitted[0].Status)
	for _, j := range listed.Jobs {
		assert.NotEqual(t, id, j.ID, "a submitted job is no queue job")
	}
	out, errOut, code = h.run("queue", "list")
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "Submitted by Atelier processes to the worker holding their device")
	assert.Regexp(t, fmt.Sprintf(`(?m)^%d\s+submitted, pending\s+-\s+cpu\s+pid %d\s`, id, g.cmd.Process.Pid), out)

	require.NoError(t, os.Remove(init))
	require.NoError(t, syscall.Kill(workers[0], syscall.SIGCONT))

	d, code := g.done(t)
	assert.NotZero(t, code)
	require.NotNil(t, d.Error, g.stderr)
	assert.Equal(t, failure.ErrInvalidRequest, d.Error.Code)
	assert.Equal(t, "init_image", d.Error.Field, "the submitter names the field, as the holder's check did")
	assert.Contains(t, d.Error.Message, "does not exist")
	assert.Empty(t, workerPIDs(g.cmd.Process.Pid), "the submitting process starts no worker")
	for _, j := range h.history() {
		if j.ID == id {
			assert.Equal(t, store.StatusFailed, j.Status)
			assert.Equal(t, "init_image", j.ErrorField, "the history records the field")
		}
	}
	require.NoError(t, syscall.Kill(-holder.cmd.Process.Pid, syscall.SIGINT))
	holder.rest(t)
	h.checkIntegrity()
}

func TestDoctorAndBenchStartNoWorkerOnADeviceAnotherProcessHolds(t *testing.T) {
	requireWorker(t)
	h := newHome(t)

	// A free device: doctor says so, holds it for its probe worker and
	// gives it back.
	stdout, stderr, code := h.run("doctor")
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
	assert.Contains(t, stdout, "device leases: none")
	assert.Contains(t, stdout, "cpu is free: this check holds its lease while its worker runs")
	assert.Contains(t, stdout, "worker ok")
	_, live, err := h.openHistory().DeviceLease(context.Background(), "cpu")
	require.NoError(t, err)
	assert.False(t, live, "doctor gave the lease back")

	holder := startQueueRun(t, h, "--watch")
	pid := holder.cmd.Process.Pid
	h.holdsCPU(pid)
	who := fmt.Sprintf("pid %d, atelier queue run --json --watch", pid)

	// doctor names the holder and starts no worker of its own.
	stdout, stderr, code = h.run("doctor")
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
	assert.Contains(t, stdout, "device lease: cpu held by "+who+" since ")
	assert.Contains(t, stdout, "the worker was not started: another Atelier process ("+who+") holds cpu")
	assert.NotContains(t, stdout, "worker ok")

	// bench refuses: it would time the holder's worker too.
	_, stderr, code = h.run("bench", "--model", "tiny", "--steps", "2", "--width", "64", "--height", "64",
		"--runs", "1", "--warmup", "1", "--batches", "1", "--preview-every", "0", "--baseline=false")
	assert.Equal(t, exitFailure, code)
	assert.Contains(t, stderr, "atelier bench: another Atelier process ("+who+") holds cpu since ")
	assert.Contains(t, stderr, "stop it (or let it finish), then run the bench again")

	// Neither took the lease from the holder.
	l, live, err := h.openHistory().DeviceLease(context.Background(), "cpu")
	require.NoError(t, err)
	assert.True(t, live)
	assert.Equal(t, pid, l.PID)
	require.NoError(t, syscall.Kill(-pid, syscall.SIGINT))
	holder.rest(t)
}

func TestHistoryVerifyRunsOnTheHoldersWorkerAndRecordsNothing(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	// A job made before any other process runs.
	stdout, stderr, code := h.run("generate", "--model", "tiny", "--prompt", "checked elsewhere", "--steps", "3",
		"--width", "64", "--height", "64", "--seed", "11", "--json")
	require.Equal(t, 0, code, stderr)
	var made doneLine
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &made))
	require.True(t, made.OK, stderr)

	holder := startQueueRun(t, h, "--watch")
	h.holdsCPU(holder.cmd.Process.Pid)
	before := h.history()
	imagesBefore := h.images()

	stdout, stderr, code = h.run("history", "verify", strconv.FormatInt(made.JobID, 10), "--json")
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
	assert.Contains(t, stderr, fmt.Sprintf("note: Atelier process %d holds cpu, so its worker runs the check", holder.cmd.Process.Pid))
	assert.NotContains(t, stderr, "starting the worker", "verify starts no worker of its own")
	var rep struct {
		Identical bool `json:"identical"`
		Now       struct {
			Device string `json:"device"`
		} `json:"now"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &rep), stdout)
	assert.True(t, rep.Identical, stdout)
	assert.Equal(t, "cpu", rep.Now.Device)
	// The holder's worker made it: it has one now (queue run --watch starts
	// its worker at its first job, and this was its only one).
	assert.Len(t, workerPIDs(holder.cmd.Process.Pid), 1, "verify stderr:\n%s\nholder stderr:\n%s", stderr, holder.stderr)

	// Nothing recorded: the same jobs and images, no check left behind, and
	// the check's folder is gone.
	after := h.history()
	require.Len(t, after, len(before))
	assert.Equal(t, before[0].ID, after[0].ID)
	assert.Equal(t, imagesBefore, h.images())
	busy, err := h.openHistory().DeviceWork(context.Background(), "cpu", "cpu")
	require.NoError(t, err)
	assert.False(t, busy, "no reproduction check left for the holder")
	left, err := filepath.Glob(filepath.Join(h.dir, "cache", "atelier-verify-*"))
	require.NoError(t, err)
	assert.Empty(t, left, "the check's temporary folder is removed")

	require.NoError(t, syscall.Kill(-holder.cmd.Process.Pid, syscall.SIGINT))
	holder.rest(t)
	h.checkIntegrity()
}

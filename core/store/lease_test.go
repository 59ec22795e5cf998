//go:build unix

package store

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/protocol"
	"atelier/core/request"
)

const leaseHelperEnv = "ATELIER_LEASE_HELPER"

// TestLeaseHelperProcess is not a test: the tests below start this binary
// again with leaseHelperEnv set, and it then plays another Atelier process.
func TestLeaseHelperProcess(t *testing.T) {
	mode := os.Getenv(leaseHelperEnv)
	if mode == "" {
		t.Skip("helper process for the lease tests")
	}
	s, err := OpenStore(os.Getenv(leaseHelperEnv + "_DB"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	ctx := context.Background()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	switch mode {
	case "hold-and-serve":
		// Take the cpu lease, then claim the first job submitted to it and
		// keep it running until killed, as a holder killed mid-job.
		held, _, err := s.AcquireLease(ctx, "cpu")
		if err != nil || !held {
			fail(fmt.Errorf("lease not taken: %v", err))
		}
		fmt.Println("held")
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() { // one line per "look now" from the test
			j, err := s.ClaimRelayed(ctx, "cpu")
			if err != nil {
				fail(err)
			}
			if j != nil {
				fmt.Printf("running %d\n", j.ID)
			} else {
				fmt.Println("nothing")
			}
		}
		select {}
	case "submit-and-exit":
		id, err := s.SubmitRelayed(ctx, "orphan-submit", sampleRequest("nobody waits"), "cpu")
		if err != nil {
			fail(err)
		}
		fmt.Printf("submitted %d\n", id)
		os.Exit(0)
	}
	os.Exit(4)
}

type leaseHelper struct {
	cmd   *exec.Cmd
	in    *os.File
	lines *bufio.Scanner
}

func startLeaseHelper(t *testing.T, mode, db string) *leaseHelper {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^TestLeaseHelperProcess$")
	cmd.Env = append(os.Environ(), leaseHelperEnv+"="+mode, leaseHelperEnv+"_DB="+db)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	r, w, err := os.Pipe()
	require.NoError(t, err)
	cmd.Stdin = r
	require.NoError(t, cmd.Start())
	r.Close()
	t.Cleanup(func() {
		w.Close()
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return &leaseHelper{cmd: cmd, in: w, lines: bufio.NewScanner(out)}
}

// next returns the helper's next line of output.
func (h *leaseHelper) next(t *testing.T) string {
	t.Helper()
	require.True(t, h.lines.Scan(), "the helper ended early")
	return h.lines.Text()
}

func TestLeaseIsHeldByOneProcessAndTakenOverWhenItDies(t *testing.T) {
	s, path := openTestStore(t)
	ctx := context.Background()
	h := startLeaseHelper(t, "hold-and-serve", path)
	require.Equal(t, "held", h.next(t))

	// The helper holds the device: this process must not take it.
	held, l, err := s.AcquireLease(ctx, "cpu")
	require.NoError(t, err)
	assert.False(t, held)
	assert.Equal(t, h.cmd.Process.Pid, l.PID)
	assert.False(t, l.Mine)
	_, live, err := s.DeviceLease(ctx, "cpu")
	require.NoError(t, err)
	assert.True(t, live)
	require.NoError(t, s.ReleaseLease(ctx, "cpu")) // not ours: nothing happens
	_, live, err = s.DeviceLease(ctx, "cpu")
	require.NoError(t, err)
	assert.True(t, live)

	// Another device is free.
	held, _, err = s.AcquireLease(ctx, "cuda:0")
	require.NoError(t, err)
	assert.True(t, held)

	// A job submitted here is run by the holder.
	id, err := s.SubmitRelayed(ctx, "relayed-1", sampleRequest("run it there"), "cpu")
	require.NoError(t, err)
	fmt.Fprintln(h.in, "look")
	require.Equal(t, "running "+strconv.FormatInt(id, 10), h.next(t))
	st, err := s.GetRelayState(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, StatusRunning, st.Status)
	assert.Equal(t, 1, st.Attempts)

	// kill -9 of the holder mid-job: the lease and the job are taken over.
	require.NoError(t, h.cmd.Process.Signal(syscall.SIGKILL))
	_ = h.cmd.Wait()
	held, l, err = s.AcquireLease(ctx, "cpu")
	require.NoError(t, err)
	require.True(t, held, "the dead holder's lease must be taken over")
	assert.True(t, l.Mine)
	st, err = s.GetRelayState(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, StatusInterrupted, st.Status, "the takeover marks the dead holder's job interrupted")

	j, err := s.ClaimRelayed(ctx, "cpu")
	require.NoError(t, err)
	require.NotNil(t, j)
	assert.Equal(t, id, j.ID)
	assert.Equal(t, 2, j.Attempts, "the interrupted job runs once more")
	require.NoError(t, s.SetRelayProgress(ctx, id, "denoising", 2, 4))
	require.NoError(t, s.SetRelayPreview(ctx, id, 2, "/tmp/preview.png"))
	require.NoError(t, s.SetControlImages(ctx, id, []string{"/tmp/edges.png"}))
	st, err = s.GetRelayState(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, RelayState{Status: StatusRunning, Stage: "denoising", Step: 2, Total: 4,
		PreviewPath: "/tmp/preview.png", PreviewStep: 2, Attempts: 2, ControlImages: []string{"/tmp/edges.png"}}, st)
	require.NoError(t, s.FinishJob(ctx, id, &protocol.Metrics{TotalS: 1},
		[]protocol.ImageResult{{Path: "/tmp/a.png", Seed: 1, Width: 64, Height: 64}}))

	// Done is done: nothing runs twice.
	j, err = s.ClaimRelayed(ctx, "cpu")
	require.NoError(t, err)
	assert.Nil(t, j)
	rec, err := s.GetJob(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, StatusDone, rec.Status)
	assert.Len(t, rec.Images, 1)

	require.NoError(t, s.RenewLease(ctx, "cpu"))
	require.NoError(t, s.ReleaseLease(ctx, "cpu"))
	assert.ErrorIs(t, s.RenewLease(ctx, "cpu"), ErrLeaseLost)
	_, live, err = s.DeviceLease(ctx, "cpu")
	require.NoError(t, err)
	assert.False(t, live)

	ok, err := s.IntegrityCheck(ctx)
	require.NoError(t, err)
	assert.Equal(t, "ok", ok)
}

func TestLeaseOfAReusedPidOrAnotherHostIsJudgedByWhatCanBeTold(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	pid, start := selfProcess()
	if start == 0 {
		t.Skip("no /proc: start times cannot be read here")
	}
	now := formatTime(time.Now())
	insert := func(device string, pid int, start int64, host, renewed string) {
		t.Helper()
		_, err := s.db.Exec(`INSERT OR REPLACE INTO device_leases (device, holder_pid, holder_start, host, acquired_at, renewed_at)
			VALUES (?, ?, ?, ?, ?, ?)`, device, pid, start, host, now, renewed)
		require.NoError(t, err)
	}
	// This process's pid with another start time: the pid was reused by us,
	// the holder is gone.
	insert("cpu", pid, start+1, thisHost(), now)
	held, _, err := s.AcquireLease(ctx, "cpu")
	require.NoError(t, err)
	assert.True(t, held)

	// Another host's lease cannot be probed: it holds while renewed...
	insert("cuda:0", 1, 1, thisHost()+"-elsewhere", now)
	held, l, err := s.AcquireLease(ctx, "cuda:0")
	require.NoError(t, err)
	assert.False(t, held)
	assert.Equal(t, thisHost()+"-elsewhere", l.Host)
	// ... and expires when not.
	insert("cuda:0", 1, 1, thisHost()+"-elsewhere", formatTime(time.Now().Add(-LeaseExpiry-time.Minute)))
	held, _, err = s.AcquireLease(ctx, "cuda:0")
	require.NoError(t, err)
	assert.True(t, held)

	_, _, err = s.AcquireLease(ctx, "")
	assert.Error(t, err)
}

func TestSubmittedJobsFollowTheQueueRules(t *testing.T) {
	s, path := openTestStore(t)
	ctx := context.Background()

	// A submitter that died before any holder took its job: nobody waits
	// for it, so it is not run.
	h := startLeaseHelper(t, "submit-and-exit", path)
	line := h.next(t)
	orphan, err := strconv.ParseInt(strings.TrimPrefix(line, "submitted "), 10, 64)
	require.NoError(t, err, line)
	_ = h.cmd.Wait()

	mine, err := s.SubmitRelayed(ctx, "mine", sampleRequest("waited for"), "cpu")
	require.NoError(t, err)
	other, err := s.SubmitRelayed(ctx, "other-device", sampleRequest("elsewhere"), "cuda:0")
	require.NoError(t, err)
	_, err = s.SubmitRelayed(ctx, "x", sampleRequest("x"), "")
	assert.Error(t, err)

	j, err := s.ClaimRelayed(ctx, "cpu")
	require.NoError(t, err)
	require.NotNil(t, j)
	assert.Equal(t, mine, j.ID, "the orphan is passed over")
	o, err := s.GetJob(ctx, orphan)
	require.NoError(t, err)
	assert.Equal(t, StatusInterrupted, o.Status)
	assert.Contains(t, o.ErrorMessage, "stopped before it ran")

	// A worker crash re-runs a submitted job as many times as the queue's
	// retries allow (1), then fails it.
	crash := &failure.JobError{Code: failure.ErrWorkerCrashed, Message: "the worker died"}
	require.NoError(t, s.FailJob(ctx, mine, crash))
	st, err := s.GetRelayState(ctx, mine)
	require.NoError(t, err)
	assert.Equal(t, StatusInterrupted, st.Status)
	j, err = s.ClaimRelayed(ctx, "cpu")
	require.NoError(t, err)
	require.NotNil(t, j)
	assert.Equal(t, 2, j.Attempts)
	require.NoError(t, s.FailJob(ctx, mine, crash))
	st, err = s.GetRelayState(ctx, mine)
	require.NoError(t, err)
	assert.Equal(t, StatusFailed, st.Status)
	assert.True(t, st.Finished())
	j, err = s.ClaimRelayed(ctx, "cpu")
	require.NoError(t, err)
	assert.Nil(t, j)

	// Stopping the holder on purpose puts a running one back without an attempt.
	j, err = s.ClaimRelayed(ctx, "cuda:0")
	require.NoError(t, err)
	require.NotNil(t, j)
	require.NoError(t, s.RequeueJob(ctx, other))
	st, err = s.GetRelayState(ctx, other)
	require.NoError(t, err)
	assert.Equal(t, StatusPending, st.Status)
	assert.Equal(t, 0, st.Attempts)

	// Cancel before it runs ends it at once; a running one is flagged.
	busy, err := s.DeviceWork(ctx, "cuda:0", "cuda:0")
	require.NoError(t, err)
	assert.True(t, busy)
	status, err := s.CancelJob(ctx, other)
	require.NoError(t, err)
	assert.Equal(t, StatusCancelled, status)
	busy, err = s.DeviceWork(ctx, "cuda:0", "cuda:0")
	require.NoError(t, err)
	assert.False(t, busy)
	run, err := s.SubmitRelayed(ctx, "run", sampleRequest("cancel me"), "cuda:0")
	require.NoError(t, err)
	_, err = s.ClaimRelayed(ctx, "cuda:0")
	require.NoError(t, err)
	status, err = s.CancelJob(ctx, run)
	require.NoError(t, err)
	assert.Equal(t, StatusRunning, status)
	st, err = s.GetRelayState(ctx, run)
	require.NoError(t, err)
	assert.True(t, st.CancelRequested)

	// None of them is in the queue view.
	q, err := s.QueueJobs(ctx)
	require.NoError(t, err)
	assert.Empty(t, q)
}

func TestDeviceWorkCountsOnlyTheQueueJobsThatDeviceMayRun(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	_, err := s.EnqueuePinned(ctx, 0, []request.Request{sampleRequest("gpu one")}, []string{"cuda:1"})
	require.NoError(t, err)
	for _, dev := range []string{"cpu", "cuda:0"} {
		busy, err := s.DeviceWork(ctx, dev, dev)
		require.NoError(t, err)
		assert.False(t, busy, "a job pinned to cuda:1 is no work for %s", dev)
	}
	for _, pin := range []string{"cuda:1", ""} {
		busy, err := s.DeviceWork(ctx, "auto", pin)
		require.NoError(t, err)
		assert.True(t, busy, "a worker pinned as %q may run it", pin)
	}
	_, err = s.Enqueue(ctx, 0, []request.Request{sampleRequest("anywhere")})
	require.NoError(t, err)
	busy, err := s.DeviceWork(ctx, "cpu", "cpu")
	require.NoError(t, err)
	assert.True(t, busy, "an unpinned job is work for every device")
}

//go:build unix

package ui

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"
	"time"

	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/bridge"
	"atelier/core/jobs"
	"atelier/core/paths"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
)

const holderEnv = "ATELIER_UI_HOLDER"

// TestHolderProcess is not a test: the test below starts this binary again
// with holderEnv set, and it then plays another Atelier process (as `queue
// run` does) that holds the cpu lease with a real worker, until its stdin
// closes.
func TestHolderProcess(t *testing.T) {
	root := os.Getenv(holderEnv)
	if root == "" {
		t.Skip("helper process for the shared-worker test")
	}
	dirs := paths.PathsUnder(root)
	st, err := store.OpenStore(dirs.DB)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	br := bridge.New(bridge.Config{CacheDir: os.Getenv(holderEnv + "_CACHE"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	r := jobs.NewRunner(st, br, dirs)
	r.ShareDevice("cpu")
	ctx, stop := context.WithCancel(context.Background())
	if held, _, err := r.HoldsDevice(ctx); err != nil || !held {
		fmt.Fprintln(os.Stderr, "lease not taken:", err)
		os.Exit(3)
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	fmt.Println("held")
	_ = jobs.NewQueueRunner(r).Run(ctx, false)
	br.Close()
	_ = st.ReleaseMyLeases(context.Background())
	st.Close()
	os.Exit(0)
}

// noWorker is the studio's generator in the test below: it must never be
// asked, since another process holds the device.
type noWorker struct{ calls atomic.Int32 }

func (g *noWorker) Submit(context.Context, string, request.Request) (<-chan protocol.Message, error) {
	g.calls.Add(1)
	return nil, errors.New("this process must start no worker")
}

func (g *noWorker) Cancel(string) error { return nil }

// startHolder starts TestHolderProcess on the history under root and waits
// until it holds the cpu lease; closing stdin stops it.
func startHolder(t *testing.T, root string) (*exec.Cmd, io.WriteCloser) {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^TestHolderProcess$")
	cmd.Env = append(os.Environ(), holderEnv+"="+root, holderEnv+"_CACHE="+t.TempDir())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	sc := bufio.NewScanner(stdout)
	require.True(t, sc.Scan(), "the holder ended before it held the device")
	require.Equal(t, "held", sc.Text())
	return cmd, stdin
}

func TestRealStudioRunsOnTheWorkerOfTheProcessHoldingItsDevice(t *testing.T) {
	sharedBridge(t) // for its check of the worker's environment
	root := t.TempDir()
	dirs := paths.PathsUnder(root)
	require.NoError(t, dirs.EnsureDirs())
	st, err := store.OpenStore(dirs.DB)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })

	cmd, stdin := startHolder(t, root)

	gen := &noWorker{}
	runner := jobs.NewRunner(st, gen, dirs)
	runner.ShareDevice("cpu")
	s := newTestStudio(t, eventsOf(runner), st)
	t.Cleanup(func() { s.settle(t) })

	// Generate: the holder's worker makes the image; the studio shows it.
	setForm(s, "a lighthouse on another process's worker", 3, 64, 64)
	test.Tap(s.generate)
	s.waitFor(t, jobDeadline, "the job to finish", func() bool { return s.job == nil })
	require.Equal(t, statusDone, s.status.kind, "status: %s", s.status.text.Text)
	recent, err := st.RecentImages(context.Background(), 1)
	require.NoError(t, err)
	require.Len(t, recent, 1)
	assert.Equal(t, recent[0].Path, s.view.img.File, "the viewer shows the holder's image")
	assert.FileExists(t, s.view.img.File)

	// Cancel from the studio stops the job on the holder's worker.
	setForm(s, "a long job", request.MaxSteps, 256, 256)
	test.Tap(s.generate)
	s.waitFor(t, jobDeadline, "the relayed denoising", func() bool {
		if s.job == nil {
			t.Fatalf("the job ended before denoising: %s", s.status.text.Text)
		}
		p, _ := s.job.snapshot()
		return p.Stage == "denoising" && p.Step >= 1
	})
	test.Tap(s.cancel)
	s.waitFor(t, time.Minute, "the job to end", func() bool { return s.job == nil })
	assert.Contains(t, s.status.text.Text, "Cancelled")
	jobsNow, err := st.ListJobs(context.Background(), 10)
	require.NoError(t, err)
	require.Len(t, jobsNow, 2)
	assert.Equal(t, store.StatusCancelled, jobsNow[0].Status)
	assert.Zero(t, gen.calls.Load(), "no worker started in the studio's process")

	require.NoError(t, stdin.Close())
	require.NoError(t, cmd.Wait(), "the holder stops when told")
}

func TestQueueTabSaysAnotherProcessRunsItsJobsUntilThatProcessEnds(t *testing.T) {
	sharedBridge(t) // for its check of the worker's environment
	root := t.TempDir()
	dirs := paths.PathsUnder(root)
	require.NoError(t, dirs.EnsureDirs())
	st, err := store.OpenStore(dirs.DB)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	cmd, stdin := startHolder(t, root)

	// The studio's own queue runner, over a runner that shares the device.
	gen := &noWorker{}
	runner := jobs.NewRunner(st, gen, dirs)
	runner.ShareDevice("cpu")
	q := jobs.NewQueueRunner(runner)
	s := studioOver(t, st, dirs, eventsOf(runner), q)
	q.OnEvent = s.OnQueueEvent
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		_ = q.Run(ctx, false)
		close(ran)
	}()
	t.Cleanup(func() {
		stop()
		<-ran
	})
	v := s.x.queue
	s.waitFor(t, time.Minute, "the note that another process holds the device", func() bool { return v.heldNote.Visible() })
	assert.Contains(t, v.heldNote.Text, fmt.Sprintf("Another Atelier process (pid %d", cmd.Process.Pid))
	assert.Contains(t, v.heldNote.Text, "holds the CPU")
	assert.Contains(t, v.heldNote.Text, "your jobs run on that process's worker and their progress shows here")

	// A job queued from this window runs on the holder's worker, and the
	// tab follows it to its end through the history.
	setForm(s, "queued here, run there", 3, 64, 64)
	test.Tap(s.x.addQueue)
	s.q.drain()
	queued, err := st.QueueJobs(context.Background())
	require.NoError(t, err)
	require.Len(t, queued, 1)
	id := queued[0].ID
	s.waitFor(t, jobDeadline, "the holder's run of the job, shown in the tab", func() bool {
		j := v.job(id)
		return j != nil && j.Status == store.StatusDone
	})
	assert.True(t, v.heldNote.Visible(), "the holder still holds the device")
	assert.Zero(t, gen.calls.Load(), "no worker started in the studio's process")

	// The holder ends: this window holds the device now, and says nothing
	// of another process any more.
	require.NoError(t, stdin.Close())
	require.NoError(t, cmd.Wait(), "the holder stops when told")
	s.waitFor(t, time.Minute, "the note to go", func() bool { return !v.heldNote.Visible() })
	assert.Nil(t, v.heldBy)
	held, _, err := runner.HoldsDevice(context.Background())
	require.NoError(t, err)
	assert.True(t, held, "the studio took the device over")
}

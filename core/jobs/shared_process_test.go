//go:build unix

package jobs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/paths"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/spec"
	"atelier/core/store"
)

const sharedHelperEnv = "ATELIER_SHARED_HELPER"

// holdingPlay is the generator of both processes: a denoising step and a
// preview, then the result once told (a line on the helper's stdin, or at
// once in the test process), or the cancel's error.
func holdingPlay(finish <-chan struct{}) func(string, request.Request, chan<- protocol.Message, <-chan struct{}) {
	return func(id string, req request.Request, out chan<- protocol.Message, cancel <-chan struct{}) {
		out <- protocol.Progress{ID: id, Stage: spec.StageDenoising, Step: 1, Total: 4}
		out <- protocol.Preview{ID: id, Step: 1, Path: filepath.Join(req.OutputDir, id+"-preview.png")}
		select {
		case <-cancel:
			out <- protocol.Error{ID: id, Code: failure.ErrCancelled, Message: "cancelled"}
		case <-finish:
			out <- resultFor(id, req)
		}
	}
}

// TestSharedHelperProcess is not a test: the test below starts this binary
// again with sharedHelperEnv set, and it then plays an Atelier process that
// holds the cpu lease and serves the jobs submitted to it.
func TestSharedHelperProcess(t *testing.T) {
	root := os.Getenv(sharedHelperEnv)
	if root == "" {
		t.Skip("helper process for the shared-worker tests")
	}
	dirs := paths.PathsUnder(root)
	s, err := store.OpenStore(dirs.DB)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	finish := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			finish <- struct{}{}
		}
	}()
	r := NewRunner(s, &scriptedGen{play: holdingPlay(finish)}, dirs)
	r.ShareDevice("cpu")
	if held, _, err := r.HoldsDevice(context.Background()); err != nil || !held {
		fmt.Fprintln(os.Stderr, "lease not taken:", err)
		os.Exit(3)
	}
	q := NewQueueRunner(r)
	q.Poll = 20 * time.Millisecond
	q.OnEvent = func(e QueueEvent) {}
	fmt.Println("held")
	_ = q.Run(context.Background(), false)
	os.Exit(4)
}

// events collects a Run's messages for the test to wait on.
type events struct {
	mu   sync.Mutex
	seen []protocol.Message
	ch   chan struct{}
}

func newEvents() *events { return &events{ch: make(chan struct{}, 1)} }

func (e *events) add(m protocol.Message) {
	e.mu.Lock()
	e.seen = append(e.seen, m)
	e.mu.Unlock()
	select {
	case e.ch <- struct{}{}:
	default:
	}
}

// wait returns once match holds for a message seen.
func (e *events) wait(t *testing.T, what string, match func(protocol.Message) bool) {
	t.Helper()
	deadline := time.After(2 * time.Minute)
	for {
		e.mu.Lock()
		for _, m := range e.seen {
			if match(m) {
				e.mu.Unlock()
				return
			}
		}
		e.mu.Unlock()
		select {
		case <-e.ch:
		case <-deadline:
			t.Fatalf("no %s within 2 minutes", what)
		}
	}
}

func isProgress(m protocol.Message) bool {
	p, ok := m.(protocol.Progress)
	return ok && p.Stage == spec.StageDenoising && p.Step == 1 && p.Total == 4
}

func isPreview(m protocol.Message) bool {
	_, ok := m.(protocol.Preview)
	return ok
}

type runResult struct {
	out *JobOutcome
	err error
}

func TestASubmitterRunsOnTheHoldersWorkerAndTakesOverWhenItDies(t *testing.T) {
	root := t.TempDir()
	dirs := paths.PathsUnder(root)
	s, err := store.OpenStore(dirs.DB)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })

	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^TestSharedHelperProcess$")
	cmd.Env = append(os.Environ(), sharedHelperEnv+"="+root)
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
	require.True(t, sc.Scan())
	require.Equal(t, "held", sc.Text())

	// This process's generator finishes at once: it runs only after a takeover.
	mine := make(chan struct{})
	close(mine)
	gen := &scriptedGen{play: holdingPlay(mine)}
	r := NewRunner(s, gen, dirs)
	r.ShareDevice("cpu")
	r.share.poll = 20 * time.Millisecond
	held, holder, err := r.HoldsDevice(context.Background())
	require.NoError(t, err)
	require.False(t, held)
	assert.Equal(t, cmd.Process.Pid, holder.PID)

	run := func(ctx context.Context, ev *events) chan runResult {
		done := make(chan runResult, 1)
		go func() {
			out, err := r.Run(ctx, tinyRequest(), ev.add)
			done <- runResult{out, err}
		}()
		return done
	}

	// 1. Run on the holder: its progress and preview show here, then its result.
	ev := newEvents()
	done := run(context.Background(), ev)
	ev.wait(t, "the relayed progress", isProgress)
	ev.wait(t, "the relayed preview", isPreview)
	fmt.Fprintln(stdin, "finish")
	res := <-done
	require.NoError(t, res.err)
	require.Len(t, res.out.Images, 1)
	rec, err := s.GetJob(context.Background(), res.out.JobID)
	require.NoError(t, err)
	assert.Equal(t, store.StatusDone, rec.Status)
	assert.Equal(t, res.out.Images[0].Path, rec.Images[0].Path)

	// 2. Cancelled from here while the holder runs it.
	ctx, cancel := context.WithCancel(context.Background())
	ev = newEvents()
	done = run(ctx, ev)
	ev.wait(t, "the relayed progress", isProgress)
	cancel()
	res = <-done
	var jerr *failure.JobError
	require.True(t, errors.As(res.err, &jerr), "%v", res.err)
	assert.Equal(t, failure.ErrCancelled, jerr.Code)

	gen.mu.Lock()
	assert.Empty(t, gen.submitted, "no worker here while the other process holds the device")
	gen.mu.Unlock()

	// 3. kill -9 of the holder mid-job: this process takes the device and
	// runs the job once more, to its end.
	ev = newEvents()
	done = run(context.Background(), ev)
	ev.wait(t, "the relayed progress", isProgress)
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	res = <-done
	require.NoError(t, res.err)
	gen.mu.Lock()
	assert.Len(t, gen.submitted, 1, "the job ran once more, here")
	gen.mu.Unlock()
	qj, err := s.GetQueueJob(context.Background(), res.out.JobID)
	require.NoError(t, err)
	assert.Equal(t, store.StatusDone, qj.Status)
	assert.Equal(t, 2, qj.Attempts)

	all, err := s.ListJobs(context.Background(), 0)
	require.NoError(t, err)
	assert.Len(t, all, 3, "three jobs, each run to one end")
	held, _, err = r.HoldsDevice(context.Background())
	require.NoError(t, err)
	assert.True(t, held)
	require.NoError(t, s.ReleaseMyLeases(context.Background()))
	ok, err := s.IntegrityCheck(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "ok", ok)
}

package jobs

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/paths"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
)

func newQueueGen() *queueGen {
	return &queueGen{runs: map[string]int{},
		plays: map[string]func(int, string, request.Request, chan<- protocol.Message, <-chan struct{}){}}
}

func (g *queueGen) scripted() *scriptedGen {
	return &scriptedGen{play: func(id string, req request.Request, out chan<- protocol.Message, cancel <-chan struct{}) {
		g.mu.Lock()
		g.runs[req.Prompt]++
		n := g.runs[req.Prompt]
		play := g.plays[req.Prompt]
		g.mu.Unlock()
		out <- protocol.Accepted{ID: id}
		for step := 1; step <= req.Steps; step++ {
			out <- protocol.Progress{ID: id, Stage: "denoising", Step: step, Total: req.Steps, ElapsedS: float64(step) * 0.1}
		}
		if play != nil {
			play(n, id, req, out, cancel)
			return
		}
		out <- resultFor(id, req)
	}}
}

func (g *queueGen) count(prompt string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.runs[prompt]
}

func crash(_ int, id string, _ request.Request, out chan<- protocol.Message, _ <-chan struct{}) {
	out <- protocol.Error{ID: id, Code: failure.ErrWorkerCrashed, Message: "the worker died", Detail: "Killed"}
}

func TestQueueRunnerRunsEveryJobOnce(t *testing.T) {
	qg := newQueueGen()
	r, s, _ := newTestRunner(t, qg.scripted())
	ctx := context.Background()
	session, err := s.NewSession(ctx, "batch", store.SessionFile)
	require.NoError(t, err)
	ids := enqueue(t, s, session, "a", "b", "c")

	var mu sync.Mutex
	var started []int64
	q := NewQueueRunner(r)
	q.OnEvent = func(e QueueEvent) {
		if e.Kind == QueueStarted {
			mu.Lock()
			started = append(started, e.Job.ID)
			mu.Unlock()
		}
	}
	require.NoError(t, q.Run(ctx, true))
	assert.Equal(t, ids, started)
	for _, id := range ids {
		j, err := s.GetQueueJob(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, store.StatusDone, j.Status)
		assert.Equal(t, 1, j.Attempts)
		assert.Equal(t, 4, j.Step, "the last progress is recorded")
	}
	for _, p := range []string{"a", "b", "c"} {
		assert.Equal(t, 1, qg.count(p))
	}
	// A second run finds nothing to do: finished jobs never repeat.
	require.NoError(t, q.Run(ctx, true))
	assert.Equal(t, 1, qg.count("a"))

	sess, err := s.GetSession(ctx, session)
	require.NoError(t, err)
	assert.Equal(t, 3, sess.Jobs)
	assert.Equal(t, 3, sess.Done)
	assert.Equal(t, 3, sess.Images)
	assert.InDelta(t, 1.5, sess.TotalS, 1e-9)
}

func TestQueueRunnerRequeuesAWorkerCrashOnceThenFails(t *testing.T) {
	qg := newQueueGen()
	qg.plays["flaky"] = func(n int, id string, req request.Request, out chan<- protocol.Message, c <-chan struct{}) {
		if n == 1 {
			crash(n, id, req, out, c)
			return
		}
		out <- resultFor(id, req)
	}
	qg.plays["deadly"] = crash
	r, s, _ := newTestRunner(t, qg.scripted())
	ctx := context.Background()
	ids := enqueue(t, s, 0, "flaky", "deadly", "after")

	var mu sync.Mutex
	var finished []string
	q := NewQueueRunner(r)
	q.OnEvent = func(e QueueEvent) {
		if e.Kind == QueueFinished {
			mu.Lock()
			finished = append(finished, fmt.Sprintf("%s:%s", e.Job.Request.Prompt, e.Job.Status))
			mu.Unlock()
		}
	}
	require.NoError(t, q.Run(ctx, true))
	// The interrupted job is first in line again, so it re-runs at once.
	assert.Equal(t, []string{"flaky:interrupted", "flaky:done", "deadly:interrupted", "deadly:failed", "after:done"}, finished)

	flaky, err := s.GetQueueJob(ctx, ids[0])
	require.NoError(t, err)
	assert.Equal(t, store.StatusDone, flaky.Status)
	assert.Equal(t, 2, flaky.Attempts)
	deadly, err := s.GetQueueJob(ctx, ids[1])
	require.NoError(t, err)
	assert.Equal(t, store.StatusFailed, deadly.Status, "a job that crashes the worker twice must not loop")
	assert.Equal(t, string(failure.ErrWorkerCrashed), deadly.ErrorCode)
	assert.Equal(t, "Killed", deadly.ErrorDetail)
	assert.Equal(t, 2, qg.count("deadly"))
	assert.Equal(t, 1, qg.count("after"))

	// With retries set to 0 a crash fails the job at once.
	require.NoError(t, s.SetQueueRetries(ctx, 0))
	enqueue(t, s, 0, "deadly")
	require.NoError(t, q.Run(ctx, true))
	assert.Equal(t, 3, qg.count("deadly"))
}

func TestQueueRunnerStopPutsTheJobBack(t *testing.T) {
	qg := newQueueGen()
	inJob := make(chan struct{})
	qg.plays["long"] = func(n int, id string, req request.Request, out chan<- protocol.Message, cancel <-chan struct{}) {
		if n == 1 {
			close(inJob)
			<-cancel
			out <- protocol.Error{ID: id, Code: failure.ErrCancelled, Message: "cancelled"}
			return
		}
		out <- resultFor(id, req)
	}
	r, s, _ := newTestRunner(t, qg.scripted())
	ids := enqueue(t, s, 0, "long", "next")

	ctx, stop := context.WithCancel(context.Background())
	go func() { <-inJob; stop() }()
	q := NewQueueRunner(r)
	err := q.Run(ctx, true)
	require.ErrorIs(t, err, context.Canceled)

	j, err := s.GetQueueJob(context.Background(), ids[0])
	require.NoError(t, err)
	assert.Equal(t, store.StatusPending, j.Status, "stopping the queue is not cancelling the job")
	assert.Equal(t, 0, j.Attempts, "a stop does not use up a retry")

	require.NoError(t, q.Run(context.Background(), true))
	assert.Equal(t, 2, qg.count("long"))
	assert.Equal(t, 1, qg.count("next"))
	assert.Empty(t, waitingOrder(t, s))
}

func TestQueueRunnerCancelsARunningJob(t *testing.T) {
	for _, how := range []string{"in process", "through the database"} {
		t.Run(how, func(t *testing.T) {
			qg := newQueueGen()
			r, s, _ := newTestRunner(t, qg.scripted())
			ids := enqueue(t, s, 0, "long", "next")
			q := NewQueueRunner(r)
			q.Poll = 20 * time.Millisecond
			qg.plays["long"] = func(_ int, id string, _ request.Request, out chan<- protocol.Message, cancel <-chan struct{}) {
				if how == "in process" {
					go q.Cancel(context.Background(), ids[0]) //nolint:errcheck // checked through the job's status
				} else {
					// Another process asks, as `atelier queue cancel ID` does.
					go s.CancelJob(context.Background(), ids[0]) //nolint:errcheck // idem
				}
				<-cancel
				out <- protocol.Error{ID: id, Code: failure.ErrCancelled, Message: "cancelled"}
			}
			require.NoError(t, q.Run(context.Background(), true))
			j, err := s.GetQueueJob(context.Background(), ids[0])
			require.NoError(t, err)
			assert.Equal(t, store.StatusCancelled, j.Status)
			assert.Equal(t, 1, qg.count("next"), "the queue goes on after a cancel")
		})
	}
}

func TestQueueRunnerPausedRunsNothing(t *testing.T) {
	qg := newQueueGen()
	r, s, _ := newTestRunner(t, qg.scripted())
	ctx := context.Background()
	enqueue(t, s, 0, "a")
	require.NoError(t, s.SetQueuePaused(ctx, true))
	q := NewQueueRunner(r)
	require.NoError(t, q.Run(ctx, true))
	assert.Zero(t, qg.count("a"))

	// A runner waiting in the background picks the job up on resume.
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	finished := make(chan struct{}, 1)
	q.OnEvent = func(e QueueEvent) {
		if e.Kind == QueueFinished {
			finished <- struct{}{}
		}
	}
	go func() { done <- q.Run(rctx, false) }()
	require.NoError(t, s.SetQueuePaused(ctx, false))
	q.Wake()
	select {
	case <-finished:
	case <-time.After(30 * time.Second):
		t.Fatal("the resumed queue did not run its job")
	}
	stop()
	assert.ErrorIs(t, <-done, context.Canceled)
	assert.Equal(t, 1, qg.count("a"))
}

func TestQueueJobWithAMissingModelFails(t *testing.T) {
	qg := newQueueGen()
	r, s, _ := newTestRunner(t, qg.scripted())
	ctx := context.Background()
	req := queueRequest("gone")
	req.Model = "/no/such/model"
	ids, err := s.Enqueue(ctx, 0, []request.Request{req})
	require.NoError(t, err)
	require.NoError(t, NewQueueRunner(r).Run(ctx, true))
	j, err := s.GetQueueJob(ctx, ids[0])
	require.NoError(t, err)
	assert.Equal(t, store.StatusFailed, j.Status)
	assert.Equal(t, string(failure.ErrModelNotFound), j.ErrorCode)
	assert.Zero(t, qg.count("gone"))
}

func TestEstimateQueue(t *testing.T) {
	rate := store.Rate{PixelStepsPerS: 64 * 64 * 10, OverheadS: 1} // 10 steps/s at 64x64
	req := queueRequest("x")                                       // 4 steps, 64x64
	d, ok := rate.Estimate(req)
	require.True(t, ok)
	assert.InDelta(t, 1.4, d.Seconds(), 1e-9)
	big := req
	big.Width, big.Height = 128, 128
	d, _ = rate.Estimate(big)
	assert.InDelta(t, 2.6, d.Seconds(), 1e-9, "four times the pixels, four times the denoising")
	_, ok = store.Rate{}.Estimate(req)
	assert.False(t, ok)

	running := store.QueueJob{JobRecord: store.JobRecord{ID: 1, Status: store.StatusRunning, Request: req}}
	running.Request.Steps = 20
	waiting := store.QueueJob{JobRecord: store.JobRecord{ID: 2, Status: store.StatusPending, Request: req}}
	done := store.QueueJob{JobRecord: store.JobRecord{ID: 3, Status: store.StatusDone, Request: req}}
	l := NewLive()
	for step := 0; step <= 10; step++ {
		// 5 steps per second, measured from the first denoising step at 2 s.
		l.Update(protocol.Progress{Stage: "denoising", Step: step, Total: 20, ElapsedS: 2 + float64(step)/5})
	}
	sps, ok := l.StepsPerS()
	require.True(t, ok)
	assert.InDelta(t, 5, sps, 1e-9)

	eta := EstimateQueue([]store.QueueJob{running, waiting, done}, rate, map[int64]Live{1: l})
	assert.True(t, eta.Known)
	assert.InDelta(t, 10.0/5+0.5, eta.Job[1].Seconds(), 1e-9)
	// The waiting job uses the running job's fresher speed: 5 steps/s.
	assert.InDelta(t, 4.0/5+1, eta.Job[2].Seconds(), 1e-9)
	assert.NotContains(t, eta.Job, int64(3))
	assert.InDelta(t, eta.Job[1].Seconds()+eta.Job[2].Seconds(), eta.Total.Seconds(), 1e-9)

	unknown := EstimateQueue([]store.QueueJob{waiting}, store.Rate{}, nil)
	assert.False(t, unknown.Known)
}

func (g *startFailGen) Submit(ctx context.Context, id string, req request.Request) (<-chan protocol.Message, error) {
	if g.broken.Load() {
		return nil, &failure.JobError{Code: failure.ErrWorkerCrashed, Message: "the worker stopped right after it started", Detail: "ImportError: torch"}
	}
	return g.scriptedGen.Submit(ctx, id, req)
}

func TestQueueWaitsWhileTheWorkerCannotStart(t *testing.T) {
	qg := newQueueGen()
	g := &startFailGen{scriptedGen: qg.scripted()}
	g.broken.Store(true)
	paths := paths.PathsUnder(t.TempDir())
	s, err := store.OpenStore(paths.DB)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	r := NewRunner(s, g, paths)
	ctx := context.Background()
	ids := enqueue(t, s, 0, "a", "b", "c")

	// Headless (exit when idle): the run ends with the error, and no job is burnt.
	err = NewQueueRunner(r).Run(ctx, true)
	require.ErrorIs(t, err, ErrWorkerUnavailable)
	var jerr *failure.JobError
	require.ErrorAs(t, err, &jerr, "the worker's error reaches the user")
	assert.Equal(t, "ImportError: torch", jerr.Detail)
	for _, id := range ids {
		j, err := s.GetQueueJob(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, store.StatusPending, j.Status)
		assert.Zero(t, j.Attempts)
	}

	// In the background: it reports the stall, waits, and goes on once the
	// worker starts.
	q := NewQueueRunner(r)
	q.StallWait = time.Hour // only a Wake retries
	stalled := make(chan struct{}, 10)
	finished := make(chan int64, 10)
	q.OnEvent = func(e QueueEvent) {
		switch e.Kind {
		case QueueStalled:
			stalled <- struct{}{}
		case QueueFinished:
			if e.Job.Status == store.StatusDone {
				finished <- e.Job.ID
			}
		}
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- q.Run(rctx, false) }()
	select {
	case <-stalled:
	case <-time.After(30 * time.Second):
		t.Fatal("no stall reported")
	}
	g.broken.Store(false)
	q.Wake()
	for range ids {
		select {
		case <-finished:
		case <-time.After(30 * time.Second):
			t.Fatal("the queue did not go on after the worker came back")
		}
	}
	stop()
	assert.ErrorIs(t, <-done, context.Canceled)
	for _, id := range ids {
		j, err := s.GetQueueJob(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, store.StatusDone, j.Status)
		assert.Equal(t, 1, j.Attempts, "the failed starts did not count")
	}
}

func TestRemainingCountsTheHiresPass(t *testing.T) {
	req := queueRequest("x") // 64x64, 4 steps
	live := NewLive()
	live.Update(protocol.Progress{Stage: "denoising", Step: 0, Total: 4, ElapsedS: 1})
	live.Update(protocol.Progress{Stage: "denoising", Step: 2, Total: 4, ElapsedS: 2}) // 2 steps/s
	plain, ok := live.Remaining(req, store.Rate{})
	require.True(t, ok)
	assert.InDelta(t, 1.0, plain.Seconds(), 1e-9, "2 steps left at 2 steps/s")

	req.HiresScale, req.HiresSteps, req.HiresStrength = 2, 4, 0.5
	hires, ok := live.Remaining(req, store.Rate{})
	require.True(t, ok)
	// 4x the pixels for 2 iterations: 8 steps' worth of the first pass more.
	assert.InDelta(t, 1.0+8/2.0, hires.Seconds(), 1e-9)
}

// queueGen plays each job from a per-prompt script; the default is a result.
type queueGen struct {
	mu    sync.Mutex
	runs  map[string]int // prompt → times submitted
	plays map[string]func(n int, id string, req request.Request, out chan<- protocol.Message, cancel <-chan struct{})
}

// startFailGen is a generator whose worker cannot start while broken is set.
type startFailGen struct {
	*scriptedGen
	broken atomic.Bool
}

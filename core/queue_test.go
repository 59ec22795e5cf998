package core

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"atelier/core/failure"
	"atelier/core/paths"
	"atelier/core/request"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func queueRequest(prompt string) request.Request {
	r := tinyRequest()
	r.Prompt, r.Seed = prompt, 11
	return r
}

func enqueue(t *testing.T, s *Store, session int64, prompts ...string) []int64 {
	t.Helper()
	reqs := make([]request.Request, len(prompts))
	for i, p := range prompts {
		reqs[i] = queueRequest(p)
	}
	ids, err := s.Enqueue(context.Background(), session, reqs)
	require.NoError(t, err)
	require.Len(t, ids, len(prompts))
	return ids
}

// waitingOrder is the prompts of the jobs still to run, in queue order.
func waitingOrder(t *testing.T, s *Store) []string {
	t.Helper()
	jobs, err := s.QueueJobs(context.Background())
	require.NoError(t, err)
	var out []string
	for _, j := range jobs {
		if j.Runnable() {
			out = append(out, j.Request.Prompt)
		}
	}
	return out
}

func TestEnqueueAndClaimInOrder(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	ids := enqueue(t, s, 0, "a", "b", "c")

	jobs, err := s.QueueJobs(ctx)
	require.NoError(t, err)
	require.Len(t, jobs, 3)
	for _, j := range jobs {
		assert.Equal(t, StatusPending, j.Status)
		assert.Nil(t, j.StartedAt)
		assert.Zero(t, j.Attempts)
	}

	first, err := s.ClaimNext(ctx)
	require.NoError(t, err)
	require.NotNil(t, first)
	assert.Equal(t, ids[0], first.ID)
	assert.Equal(t, StatusRunning, first.Status)
	assert.Equal(t, 1, first.Attempts)
	assert.NotNil(t, first.StartedAt)

	second, err := s.ClaimNext(ctx)
	require.NoError(t, err)
	assert.Equal(t, ids[1], second.ID, "a claimed job is never claimed again")

	// The running jobs come first in the view, then the waiting one.
	jobs, err = s.QueueJobs(ctx)
	require.NoError(t, err)
	assert.Equal(t, StatusRunning, jobs[0].Status)
	assert.Equal(t, StatusPending, jobs[2].Status)

	// Enqueue is all or nothing.
	bad := queueRequest("")
	_, err = s.Enqueue(ctx, 0, []request.Request{queueRequest("d"), bad})
	require.Error(t, err)
	assert.Equal(t, []string{"c"}, waitingOrder(t, s))

	// A generate job is not a queue job.
	_, err = s.CreateJob(ctx, "direct", sampleRequest("direct"))
	require.NoError(t, err)
	third, err := s.ClaimNext(ctx)
	require.NoError(t, err)
	assert.Equal(t, ids[2], third.ID)
	none, err := s.ClaimNext(ctx)
	require.NoError(t, err)
	assert.Nil(t, none)
}

func TestClaimIsExclusiveAcrossConnections(t *testing.T) {
	s, path := openTestStore(t)
	ctx := context.Background()
	ids := enqueue(t, s, 0, "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12")

	// Four stores (as four processes would) claim concurrently.
	var mu sync.Mutex
	seen := map[int64]int{}
	var wg sync.WaitGroup
	for range 4 {
		other, err := OpenStore(path)
		require.NoError(t, err)
		defer other.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				j, err := other.ClaimNext(ctx)
				if err != nil || j == nil {
					return
				}
				mu.Lock()
				seen[j.ID]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	require.Len(t, seen, len(ids))
	for _, id := range ids {
		assert.Equal(t, 1, seen[id], "job %d claimed %d times", id, seen[id])
	}
}

func TestMoveJob(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	ids := enqueue(t, s, 0, "a", "b", "c", "d")

	require.NoError(t, s.MoveJob(ctx, ids[2], MoveUp))
	assert.Equal(t, []string{"a", "c", "b", "d"}, waitingOrder(t, s))
	require.NoError(t, s.MoveJob(ctx, ids[0], MoveDown))
	assert.Equal(t, []string{"c", "a", "b", "d"}, waitingOrder(t, s))
	require.NoError(t, s.MoveJob(ctx, ids[3], MoveTop))
	assert.Equal(t, []string{"d", "c", "a", "b"}, waitingOrder(t, s))
	require.NoError(t, s.MoveJob(ctx, ids[3], MoveUp), "moving the first job up is a no-op")
	require.NoError(t, s.MoveJob(ctx, ids[3], MoveBottom))
	assert.Equal(t, []string{"c", "a", "b", "d"}, waitingOrder(t, s))

	// The claimed order follows the moves.
	j, err := s.ClaimNext(ctx)
	require.NoError(t, err)
	assert.Equal(t, "c", j.Request.Prompt)
	assert.ErrorIs(t, s.MoveJob(ctx, j.ID, MoveDown), ErrNotPending, "a running job cannot move")
	assert.ErrorIs(t, s.MoveJob(ctx, 9999, MoveDown), ErrNotFound)
}

func TestEditCancelRetryClear(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	ids := enqueue(t, s, 0, "a", "b", "c")

	edited := queueRequest("a, edited")
	edited.Steps = 3
	require.NoError(t, s.UpdatePendingJob(ctx, ids[0], edited))
	j, err := s.GetQueueJob(ctx, ids[0])
	require.NoError(t, err)
	assert.Equal(t, "a, edited", j.Request.Prompt)
	assert.Equal(t, 3, j.Request.Steps)
	// The search index follows the edit.
	var hits int
	require.NoError(t, s.db.QueryRow(`SELECT COUNT(*) FROM jobs_fts WHERE jobs_fts MATCH 'edited'`).Scan(&hits))
	assert.Equal(t, 1, hits)
	bad := edited
	bad.Steps = 0
	_, isValidation := request.AsValidation(s.UpdatePendingJob(ctx, ids[0], bad))
	assert.True(t, isValidation)

	st, err := s.CancelJob(ctx, ids[1])
	require.NoError(t, err)
	assert.Equal(t, StatusCancelled, st)
	assert.Equal(t, []string{"a, edited", "c"}, waitingOrder(t, s))
	_, err = s.CancelJob(ctx, ids[1])
	assert.Error(t, err, "cancelling twice says so")

	running, err := s.ClaimNext(ctx)
	require.NoError(t, err)
	assert.ErrorIs(t, s.UpdatePendingJob(ctx, running.ID, edited), ErrNotPending)
	st, err = s.CancelJob(ctx, running.ID)
	require.NoError(t, err)
	assert.Equal(t, StatusRunning, st, "a running job is flagged; its process stops it")
	yes, err := s.CancelRequested(ctx, running.ID)
	require.NoError(t, err)
	assert.True(t, yes)

	// Retry makes a new pending job with the same settings.
	newID, err := s.RetryJob(ctx, ids[1])
	require.NoError(t, err)
	nj, err := s.GetQueueJob(ctx, newID)
	require.NoError(t, err)
	assert.Equal(t, StatusPending, nj.Status)
	assert.Equal(t, "b", nj.Request.Prompt)
	assert.Equal(t, []string{"c", "b"}, waitingOrder(t, s), "a retry goes to the end")
	_, err = s.RetryJob(ctx, ids[2])
	assert.Error(t, err, "a pending job cannot be retried")

	// Clear removes finished jobs from the view, and keeps them in the history.
	require.NoError(t, s.FinishJob(ctx, running.ID, &Metrics{TotalS: 1}, nil))
	n, err := s.ClearQueue(ctx, false)
	require.NoError(t, err)
	assert.Equal(t, 2, n) // the done one and the cancelled one
	jobs, err := s.QueueJobs(ctx)
	require.NoError(t, err)
	assert.Len(t, jobs, 2)
	_, err = s.GetJob(ctx, running.ID)
	assert.NoError(t, err)
	n, err = s.ClearQueue(ctx, true)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	assert.Empty(t, waitingOrder(t, s))
}

func TestPauseAndRetriesSettings(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	p, err := s.QueuePaused(ctx)
	require.NoError(t, err)
	assert.False(t, p)
	require.NoError(t, s.SetQueuePaused(ctx, true))
	p, err = s.QueuePaused(ctx)
	require.NoError(t, err)
	assert.True(t, p)
	assert.Equal(t, DefaultQueueRetries, s.QueueRetries(ctx))
	require.NoError(t, s.SetQueueRetries(ctx, 3))
	assert.Equal(t, 3, s.QueueRetries(ctx))
	assert.Error(t, s.SetQueueRetries(ctx, -1))
}

// queueGen plays each job from a per-prompt script; the default is a result.
type queueGen struct {
	mu    sync.Mutex
	runs  map[string]int // prompt → times submitted
	plays map[string]func(n int, id string, req request.Request, out chan<- Message, cancel <-chan struct{})
}

func newQueueGen() *queueGen {
	return &queueGen{runs: map[string]int{},
		plays: map[string]func(int, string, request.Request, chan<- Message, <-chan struct{}){}}
}

func (g *queueGen) scripted() *scriptedGen {
	return &scriptedGen{play: func(id string, req request.Request, out chan<- Message, cancel <-chan struct{}) {
		g.mu.Lock()
		g.runs[req.Prompt]++
		n := g.runs[req.Prompt]
		play := g.plays[req.Prompt]
		g.mu.Unlock()
		out <- Message{Type: MsgAccepted, ID: id}
		for step := 1; step <= req.Steps; step++ {
			out <- Message{Type: MsgProgress, ID: id, Stage: "denoising", Step: step, Total: req.Steps, ElapsedS: float64(step) * 0.1}
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

func crash(_ int, id string, _ request.Request, out chan<- Message, _ <-chan struct{}) {
	out <- Message{Type: MsgError, ID: id, Code: failure.ErrWorkerCrashed, Message: "the worker died", Detail: "Killed"}
}

func TestQueueRunnerRunsEveryJobOnce(t *testing.T) {
	qg := newQueueGen()
	r, s, _ := newTestRunner(t, qg.scripted())
	ctx := context.Background()
	session, err := s.NewSession(ctx, "batch", SessionFile)
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
		assert.Equal(t, StatusDone, j.Status)
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
	qg.plays["flaky"] = func(n int, id string, req request.Request, out chan<- Message, c <-chan struct{}) {
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
	assert.Equal(t, StatusDone, flaky.Status)
	assert.Equal(t, 2, flaky.Attempts)
	deadly, err := s.GetQueueJob(ctx, ids[1])
	require.NoError(t, err)
	assert.Equal(t, StatusFailed, deadly.Status, "a job that crashes the worker twice must not loop")
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
	qg.plays["long"] = func(n int, id string, req request.Request, out chan<- Message, cancel <-chan struct{}) {
		if n == 1 {
			close(inJob)
			<-cancel
			out <- Message{Type: MsgError, ID: id, Code: failure.ErrCancelled, Message: "cancelled"}
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
	assert.Equal(t, StatusPending, j.Status, "stopping the queue is not cancelling the job")
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
			qg.plays["long"] = func(_ int, id string, _ request.Request, out chan<- Message, cancel <-chan struct{}) {
				if how == "in process" {
					go q.Cancel(context.Background(), ids[0]) //nolint:errcheck // checked through the job's status
				} else {
					// Another process asks, as `atelier queue cancel ID` does.
					go s.CancelJob(context.Background(), ids[0]) //nolint:errcheck // idem
				}
				<-cancel
				out <- Message{Type: MsgError, ID: id, Code: failure.ErrCancelled, Message: "cancelled"}
			}
			require.NoError(t, q.Run(context.Background(), true))
			j, err := s.GetQueueJob(context.Background(), ids[0])
			require.NoError(t, err)
			assert.Equal(t, StatusCancelled, j.Status)
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
	assert.Equal(t, StatusFailed, j.Status)
	assert.Equal(t, string(failure.ErrModelNotFound), j.ErrorCode)
	assert.Zero(t, qg.count("gone"))
}

func TestEstimateQueue(t *testing.T) {
	rate := Rate{PixelStepsPerS: 64 * 64 * 10, OverheadS: 1} // 10 steps/s at 64x64
	req := queueRequest("x")                                 // 4 steps, 64x64
	d, ok := rate.Estimate(req)
	require.True(t, ok)
	assert.InDelta(t, 1.4, d.Seconds(), 1e-9)
	big := req
	big.Width, big.Height = 128, 128
	d, _ = rate.Estimate(big)
	assert.InDelta(t, 2.6, d.Seconds(), 1e-9, "four times the pixels, four times the denoising")
	_, ok = Rate{}.Estimate(req)
	assert.False(t, ok)

	running := QueueJob{JobRecord: JobRecord{ID: 1, Status: StatusRunning, Request: req}}
	running.Request.Steps = 20
	waiting := QueueJob{JobRecord: JobRecord{ID: 2, Status: StatusPending, Request: req}}
	done := QueueJob{JobRecord: JobRecord{ID: 3, Status: StatusDone, Request: req}}
	l := NewLive()
	for step := 0; step <= 10; step++ {
		// 5 steps per second, measured from the first denoising step at 2 s.
		l.Update(Message{Type: MsgProgress, Stage: "denoising", Step: step, Total: 20, ElapsedS: 2 + float64(step)/5})
	}
	sps, ok := l.StepsPerS()
	require.True(t, ok)
	assert.InDelta(t, 5, sps, 1e-9)

	eta := EstimateQueue([]QueueJob{running, waiting, done}, rate, map[int64]Live{1: l})
	assert.True(t, eta.Known)
	assert.InDelta(t, 10.0/5+0.5, eta.Job[1].Seconds(), 1e-9)
	// The waiting job uses the running job's fresher speed: 5 steps/s.
	assert.InDelta(t, 4.0/5+1, eta.Job[2].Seconds(), 1e-9)
	assert.NotContains(t, eta.Job, int64(3))
	assert.InDelta(t, eta.Job[1].Seconds()+eta.Job[2].Seconds(), eta.Total.Seconds(), 1e-9)

	unknown := EstimateQueue([]QueueJob{waiting}, Rate{}, nil)
	assert.False(t, unknown.Known)
}

func TestMeasuredRate(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	r, err := s.MeasuredRate(ctx, 10)
	require.NoError(t, err)
	assert.False(t, r.Known())
	req := queueRequest("x") // 64x64, batch 1, 4 steps
	id, err := s.CreateJob(ctx, "m1", req)
	require.NoError(t, err)
	require.NoError(t, s.FinishJob(ctx, id, &Metrics{TotalS: 3, DenoiseS: 2, ItS: 2}, nil))
	r, err = s.MeasuredRate(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, 1, r.Samples)
	assert.InDelta(t, 64*64*4/2.0, r.PixelStepsPerS, 1e-9)
	assert.InDelta(t, 1, r.OverheadS, 1e-9)

	// A hires job's denoising time includes its second pass (2x: 128x128,
	// 4 steps x 0.5): that work counts too.
	hires := queueRequest("y")
	hires.HiresScale = 2
	id, err = s.CreateJob(ctx, "m2", hires)
	require.NoError(t, err)
	require.NoError(t, s.FinishJob(ctx, id, &Metrics{TotalS: 5, DenoiseS: 4, ItS: 2}, nil))
	r, err = s.MeasuredRate(ctx, 10)
	require.NoError(t, err)
	work := 64*64*4.0 + 64*64*4 + 128*128*4*0.5
	assert.InDelta(t, work/6, r.PixelStepsPerS, 1e-9)
	first, _ := r.Estimate(req)
	second, _ := r.Estimate(hires)
	assert.InDelta(t, (64*64*4+128*128*4*0.5)/r.PixelStepsPerS+r.OverheadS, second.Seconds(), 1e-6)
	assert.Greater(t, second, first, "the hires pass adds to the estimate")
	up := queueRequest("z")
	up.UpscaleOnly, up.InitImage, up.Upscaler = true, "/in.png", request.LanczosUpscaler
	third, _ := r.Estimate(up)
	assert.InDelta(t, r.OverheadS, third.Seconds(), 1e-6, "an upscale alone denoises nothing")
}

// startFailGen is a generator whose worker cannot start while broken is set.
type startFailGen struct {
	*scriptedGen
	broken atomic.Bool
}

func (g *startFailGen) Submit(ctx context.Context, id string, req request.Request) (<-chan Message, error) {
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
	s, err := OpenStore(paths.DB)
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
		assert.Equal(t, StatusPending, j.Status)
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
			if e.Job.Status == StatusDone {
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
		assert.Equal(t, StatusDone, j.Status)
		assert.Equal(t, 1, j.Attempts, "the failed starts did not count")
	}
}

func TestQueueJobsKeepsEveryWaitingJobAndTheNewestFinished(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	reqs := make([]request.Request, QueueFinishedShown+20)
	for i := range reqs {
		reqs[i] = queueRequest(fmt.Sprintf("job %d", i))
	}
	ids, err := s.Enqueue(ctx, 0, reqs)
	require.NoError(t, err)
	// All but the last 10 finish (straight in SQL: this is about the listing).
	_, err = s.db.Exec(`UPDATE jobs SET status = 'done', finished_at = created_at WHERE id <= ?`, ids[len(ids)-11])
	require.NoError(t, err)
	jobs, err := s.QueueJobs(ctx)
	require.NoError(t, err)
	require.Len(t, jobs, 10+QueueFinishedShown)
	for i, j := range jobs[:10] {
		assert.Equal(t, StatusPending, j.Status)
		assert.Equal(t, ids[len(ids)-10+i], j.ID, "waiting jobs in queue order")
	}
	assert.Equal(t, ids[len(ids)-11], jobs[10].ID, "then the newest finished one")
	counts, err := s.QueueCounts(ctx)
	require.NoError(t, err)
	assert.Equal(t, len(ids)-10, counts[StatusDone], "the counts cover every job")
}

func TestRemainingCountsTheHiresPass(t *testing.T) {
	req := queueRequest("x") // 64x64, 4 steps
	live := NewLive()
	live.Update(Message{Type: MsgProgress, Stage: "denoising", Step: 0, Total: 4, ElapsedS: 1})
	live.Update(Message{Type: MsgProgress, Stage: "denoising", Step: 2, Total: 4, ElapsedS: 2}) // 2 steps/s
	plain, ok := live.Remaining(req, Rate{})
	require.True(t, ok)
	assert.InDelta(t, 1.0, plain.Seconds(), 1e-9, "2 steps left at 2 steps/s")

	req.HiresScale, req.HiresSteps, req.HiresStrength = 2, 4, 0.5
	hires, ok := live.Remaining(req, Rate{})
	require.True(t, ok)
	// 4x the pixels for 2 iterations: 8 steps' worth of the first pass more.
	assert.InDelta(t, 1.0+8/2.0, hires.Seconds(), 1e-9)
}

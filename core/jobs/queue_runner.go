package jobs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"atelier/core/failure"
	"atelier/core/paths"
	"atelier/core/protocol"
	"atelier/core/spec"
	"atelier/core/store"
)

// ErrQueueStopped is the cause with which a queue runner's context ends a job
// when the queue itself stops (the app closes, the CLI gets Ctrl-C): the job
// goes back to pending instead of counting as cancelled.
var ErrQueueStopped = errors.New("the queue was stopped")

// ErrWorkerUnavailable wraps the error of a generator that could not take a
// queue job at all (the worker does not start): the job is pending again, and
// the queue waits (QueueStalled) instead of failing every job in turn.
var ErrWorkerUnavailable = errors.New("the worker is unavailable")

// Kinds of QueueEvent.
const (
	QueueStarted  = "started"  // Job was claimed and starts
	QueueMessage  = "message"  // Message is a worker message of Job
	QueueFinished = "finished" // Job ended (re-read: its new status); Err says why it failed
	QueueIdle     = "idle"     // nothing to run (or paused); the runner waits
	QueueStalled  = "stalled"  // the worker cannot start (Err says why); the runner waits, then tries again
)

// QueueEvent is what a QueueRunner reports while it works.
type QueueEvent struct {
	Kind    string
	Job     *store.QueueJob
	Message protocol.Message
	Outcome *JobOutcome
	Err     error
	Paused  bool // with QueueIdle
}

// QueueRunner runs the queue's jobs one at a time through a Runner (so one
// worker never gets two jobs). Several runners, in several processes, may
// serve one database: claiming a job is atomic.
type QueueRunner struct {
	runner *Runner
	store  *store.Store

	// OnEvent, if set, receives every event, on the runner's goroutine.
	OnEvent func(QueueEvent)
	// Poll is how often the runner looks for new jobs while idle and for a
	// cancel of the running job asked by another process.
	Poll time.Duration
	// ProgressEvery throttles the progress written to the database.
	ProgressEvery time.Duration
	// StallWait is how long the runner waits after the worker failed to
	// start before it tries again (Wake tries at once).
	StallWait time.Duration

	wake chan struct{}

	mu      sync.Mutex
	running int64                   // id of the job running now, 0 if none
	cancel  context.CancelCauseFunc // cancels it
}

// NewQueueRunner returns a runner for the queue of r's store.
func NewQueueRunner(r *Runner) *QueueRunner {
	return &QueueRunner{runner: r, store: r.store, Poll: 500 * time.Millisecond,
		ProgressEvery: time.Second, StallWait: 30 * time.Second, wake: make(chan struct{}, 1)}
}

// Wake tells an idle runner to look at the queue now (jobs were added, the
// queue resumed).
func (q *QueueRunner) Wake() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Running returns the id of the job this runner runs now, or 0.
func (q *QueueRunner) Running() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.running
}

// Cancel cancels a queue job: a waiting one at once, a running one within a
// step (at once if this runner runs it; other processes see the request in
// the database within Poll).
func (q *QueueRunner) Cancel(ctx context.Context, id int64) (string, error) {
	st, err := q.store.CancelJob(ctx, id)
	if err == nil && st == store.StatusRunning {
		q.mu.Lock()
		if q.running == id && q.cancel != nil {
			q.cancel(context.Canceled)
		}
		q.mu.Unlock()
	}
	return st, err
}

func (q *QueueRunner) emit(e QueueEvent) {
	if q.OnEvent != nil {
		q.OnEvent(e)
	}
}

// Run processes the queue until ctx ends. With exitWhenIdle it returns nil
// as soon as there is nothing to run (or the queue is paused) instead of
// waiting for more. When ctx ends mid-job, the job goes back to pending and
// Run returns ctx's error. When the worker cannot start, the job stays
// pending: with exitWhenIdle Run returns that error (wrapping
// ErrWorkerUnavailable); otherwise it reports QueueStalled and tries again
// after StallWait or a Wake.
func (q *QueueRunner) Run(ctx context.Context, exitWhenIdle bool) error {
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// A job of another process that died meanwhile (a killed
		// `atelier queue run`) comes back to the queue here, not only at
		// the next start.
		if _, err := q.store.MarkInterrupted(ctx); err != nil && ctx.Err() == nil {
			return err
		}
		paused, err := q.store.QueuePaused(ctx)
		if err != nil && ctx.Err() == nil {
			return err
		}
		ran := false
		if !paused {
			if ran, err = q.runNext(ctx); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if !errors.Is(err, ErrWorkerUnavailable) || exitWhenIdle {
					return err
				}
				q.emit(QueueEvent{Kind: QueueStalled, Err: err})
				if !q.sleep(ctx, q.StallWait) {
					return ctx.Err()
				}
				continue
			}
		}
		if ran {
			continue
		}
		if exitWhenIdle {
			return nil
		}
		q.emit(QueueEvent{Kind: QueueIdle, Paused: paused})
		if !q.sleep(ctx, q.Poll) {
			return ctx.Err()
		}
	}
}

// sleep waits for d, a Wake or the end of ctx; it reports whether ctx lives.
func (q *QueueRunner) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-q.wake:
	case <-t.C:
	}
	return true
}

// runNext claims and runs one job; it reports whether there was one.
func (q *QueueRunner) runNext(ctx context.Context) (bool, error) {
	release, err := q.runner.acquire(ctx)
	if err != nil {
		return false, err
	}
	defer release()
	job, err := q.store.ClaimNext(ctx)
	if err != nil || job == nil {
		return false, err
	}
	if err := q.runClaimed(ctx, job); errors.Is(err, ErrWorkerUnavailable) {
		return false, err
	}
	return true, nil
}

func (q *QueueRunner) runClaimed(ctx context.Context, job *store.QueueJob) error {
	rec := context.WithoutCancel(ctx)
	// The job's own context: the queue stopping ends it with ErrQueueStopped
	// (back to pending), a cancel with context.Canceled (cancelled).
	jctx, jcancel := context.WithCancelCause(rec)
	defer jcancel(nil)
	q.mu.Lock()
	q.running, q.cancel = job.ID, jcancel
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		q.running, q.cancel = 0, nil
		q.mu.Unlock()
	}()
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(q.Poll)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				jcancel(ErrQueueStopped)
				return
			case <-t.C:
				if yes, err := q.store.CancelRequested(rec, job.ID); err == nil && yes {
					jcancel(context.Canceled)
				}
			}
		}
	}()

	q.emit(QueueEvent{Kind: QueueStarted, Job: job})
	out, err := q.execute(jctx, job)
	if ctx.Err() != nil && err != nil {
		err = fmt.Errorf("%w: %w", ErrQueueStopped, err)
	}
	ended, gerr := q.store.GetQueueJob(rec, job.ID)
	if gerr != nil {
		ended = job
	}
	q.emit(QueueEvent{Kind: QueueFinished, Job: ended, Outcome: out, Err: err})
	return err
}

// execute checks the files the job names again, sets its output folder and runs it.
func (q *QueueRunner) execute(ctx context.Context, job *store.QueueJob) (*JobOutcome, error) {
	rec := context.WithoutCancel(ctx)
	req := job.Request
	if err := req.PrepareQueued(); err != nil {
		return nil, q.runner.fail(rec, job.ID, toJobError(ctx, err))
	}
	req.OutputDir = filepath.Join(q.runner.paths.Images, time.Now().Format("2006-01-02"))
	if err := os.MkdirAll(req.OutputDir, 0o755); err != nil {
		return nil, q.runner.fail(rec, job.ID, &failure.JobError{Op: "create the image folder", Err: err, Code: failure.ErrInternal,
			Message: fmt.Sprintf("create the image folder: %v (check its permissions, or set %s)", err, paths.HomeEnv)})
	}
	var last time.Time
	onEvent := func(m protocol.Message) {
		if p, ok := m.(protocol.Progress); ok && p.Stage == spec.StageDenoising && (time.Since(last) >= q.ProgressEvery || p.Step == p.Total) {
			last = time.Now()
			_ = q.store.SetJobProgress(rec, job.ID, p.Step, p.Total) // progress is a hint; losing one is harmless
		}
		q.emit(QueueEvent{Kind: QueueMessage, Job: job, Message: m})
	}
	return q.runner.execute(ctx, job.ID, job.UID, req, onEvent, true)
}

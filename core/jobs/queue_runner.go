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
	// QueueDeviceHeld: another live process (Holder) holds the slot's
	// device, so the slot starts no worker; it runs jobs again once that
	// process ends.
	QueueDeviceHeld = "device_held"
	// QueueDeviceFree: the process that held the slot's device (last
	// reported with QueueDeviceHeld) is gone or gave it up, and this one
	// holds it now.
	QueueDeviceFree = "device_free"
)

// QueueEvent is what a QueueRunner reports while it works.
type QueueEvent struct {
	Kind    string
	Slot    string // the Name of the slot the event is about ("" for a runner of one unnamed slot)
	Job     *store.QueueJob
	Message protocol.Message
	Outcome *JobOutcome
	Err     error
	Paused  bool         // with QueueIdle
	Holder  *store.Lease // with QueueDeviceHeld
}

// Slot is one worker the queue feeds: a Runner over a generator of its own
// (a bridge with its own worker command and environment, which is where a
// GPU's CUDA_VISIBLE_DEVICES or another transport's command goes) and a
// name for the events and logs. Runner.Device is the device its jobs run on:
// a job pinned to a device is claimed only by a slot of that device.
type Slot struct {
	Name   string
	Runner *Runner
}

// slotState is a slot and the job it runs now.
type slotState struct {
	Slot
	wake chan struct{}

	heldBy int // pid of the other process holding the device, as last reported

	mu      sync.Mutex
	running int64                   // id of the job running now, 0 if none
	cancel  context.CancelCauseFunc // cancels it
}

// QueueRunner runs the queue's jobs on one or more slots, each running one
// job at a time through its Runner (so one worker never gets two jobs). A
// slot takes the next job when it is free, so faster workers run more jobs.
// Several runners, in several processes, may serve one database: claiming a
// job is atomic.
type QueueRunner struct {
	store *store.Store
	slots []*slotState

	// OnEvent, if set, receives every event, from one slot at a time (on
	// that slot's goroutine).
	OnEvent func(QueueEvent)
	// Poll is how often the runner looks for new jobs while idle and for a
	// cancel of the running job asked by another process.
	Poll time.Duration
	// ProgressEvery throttles the progress written to the database.
	ProgressEvery time.Duration
	// StallWait is how long the runner waits after the worker failed to
	// start before it tries again (Wake tries at once).
	StallWait time.Duration

	emitMu sync.Mutex
}

// NewQueueRunner returns a runner for the queue of r's store with r as its
// only slot (the app: the queue shares r with the Generate button).
func NewQueueRunner(r *Runner) *QueueRunner {
	return NewSlotRunner([]Slot{{Runner: r}})
}

// NewSlotRunner returns a runner that feeds every slot from the queue of the
// first slot's store; every slot's Runner must record into that store.
func NewSlotRunner(slots []Slot) *QueueRunner {
	if len(slots) == 0 {
		panic("jobs: NewSlotRunner needs at least one slot")
	}
	q := &QueueRunner{store: slots[0].Runner.store, Poll: 500 * time.Millisecond,
		ProgressEvery: time.Second, StallWait: 30 * time.Second}
	for _, s := range slots {
		q.slots = append(q.slots, &slotState{Slot: s, wake: make(chan struct{}, 1)})
	}
	return q
}

// Wake tells idle slots to look at the queue now (jobs were added, the
// queue resumed).
func (q *QueueRunner) Wake() {
	for _, s := range q.slots {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// Running returns the id of a job this runner runs now (the first slot's
// that runs one), or 0.
func (q *QueueRunner) Running() int64 {
	for _, s := range q.slots {
		s.mu.Lock()
		id := s.running
		s.mu.Unlock()
		if id != 0 {
			return id
		}
	}
	return 0
}

// Cancel cancels a queue job: a waiting one at once, a running one within a
// step (at once if this runner runs it; other processes see the request in
// the database within Poll).
func (q *QueueRunner) Cancel(ctx context.Context, id int64) (string, error) {
	st, err := q.store.CancelJob(ctx, id)
	if err == nil && st == store.StatusRunning {
		for _, s := range q.slots {
			s.mu.Lock()
			if s.running == id && s.cancel != nil {
				s.cancel(context.Canceled)
			}
			s.mu.Unlock()
		}
	}
	return st, err
}

func (q *QueueRunner) emit(s *slotState, e QueueEvent) {
	if q.OnEvent != nil {
		e.Slot = s.Name
		q.emitMu.Lock()
		defer q.emitMu.Unlock()
		q.OnEvent(e)
	}
}

// Run processes the queue until ctx ends, on every slot at once. With
// exitWhenIdle a slot stops as soon as there is nothing for it to run (or
// the queue is paused) instead of waiting for more, and Run returns nil once
// every slot has stopped. When ctx ends mid-job, the job goes back to
// pending and Run returns ctx's error. When a slot's worker cannot start,
// the job stays pending (another slot may take it): with exitWhenIdle that
// slot stops and Run returns its error (wrapping ErrWorkerUnavailable) once
// the others are done; otherwise the slot reports QueueStalled and tries
// again after StallWait or a Wake. Any other error (the history cannot be
// read) stops every slot.
func (q *QueueRunner) Run(ctx context.Context, exitWhenIdle bool) error {
	if len(q.slots) == 1 {
		return q.runSlot(ctx, q.slots[0], exitWhenIdle)
	}
	// A fatal error of one slot stops the others, whose jobs then go back to
	// pending as on Ctrl-C.
	sctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	errs := make([]error, len(q.slots))
	var wg sync.WaitGroup
	for i, s := range q.slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = q.runSlot(sctx, s, exitWhenIdle)
			if errs[i] != nil && sctx.Err() == nil && !errors.Is(errs[i], ErrWorkerUnavailable) {
				stop(errs[i])
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if cause := context.Cause(sctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// runSlot is one slot's loop: claim, run, repeat.
func (q *QueueRunner) runSlot(ctx context.Context, s *slotState, exitWhenIdle bool) error {
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
		// Jobs submitted by other processes run even while the queue is paused.
		ran, err := q.runNext(ctx, s, paused)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !errors.Is(err, ErrWorkerUnavailable) || exitWhenIdle {
				return err
			}
			q.emit(s, QueueEvent{Kind: QueueStalled, Err: err})
			if !q.sleep(ctx, s, q.StallWait) {
				return ctx.Err()
			}
			continue
		}
		if ran {
			continue
		}
		waiting, err := q.waitForDevice(ctx, s)
		if err != nil && ctx.Err() == nil {
			return err
		}
		if exitWhenIdle && !waiting {
			return nil
		}
		q.emit(s, QueueEvent{Kind: QueueIdle, Paused: paused})
		if !q.sleep(ctx, s, q.Poll) {
			return ctx.Err()
		}
	}
}

// waitForDevice reports whether s waits for its device: another live process
// holds it and work is left that s could run (queue jobs to run or running
// that are not pinned to another device, jobs submitted to the device),
// which s takes over if that process dies. It reports the holder once per
// change (QueueDeviceHeld).
func (q *QueueRunner) waitForDevice(ctx context.Context, s *slotState) (bool, error) {
	held, holder, err := s.Runner.HoldsDevice(ctx)
	if err != nil {
		return false, err
	}
	if held {
		q.deviceFree(s)
		return false, nil
	}
	if holder.PID != s.heldBy {
		s.heldBy = holder.PID
		q.emit(s, QueueEvent{Kind: QueueDeviceHeld, Holder: &holder})
	}
	return q.store.DeviceWork(ctx, s.Runner.SharedDevice(), s.Runner.Device)
}

// deviceFree reports, once, that s holds its device again after another
// process held it.
func (q *QueueRunner) deviceFree(s *slotState) {
	if s.heldBy != 0 {
		s.heldBy = 0
		q.emit(s, QueueEvent{Kind: QueueDeviceFree})
	}
}

// sleep waits for d, a Wake or the end of ctx; it reports whether ctx lives.
func (q *QueueRunner) sleep(ctx context.Context, s *slotState, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-s.wake:
	case <-t.C:
	}
	return true
}

// runNext claims and runs one job on s, a job submitted by another process
// first, then (unless paused) a queue job; it reports whether there was one.
// A slot whose device is held by another live process runs nothing.
func (q *QueueRunner) runNext(ctx context.Context, s *slotState, paused bool) (bool, error) {
	release, err := s.Runner.acquire(ctx)
	if err != nil {
		return false, err
	}
	defer release()
	if held, _, err := s.Runner.HoldsDevice(ctx); err != nil || !held {
		return false, err
	}
	q.deviceFree(s)
	if ran, err := s.Runner.serveReproduction(ctx); err != nil || ran {
		return ran, err
	}
	if ran, err := s.Runner.serveSubmitted(ctx); err != nil || ran {
		return ran, err
	}
	if paused {
		return false, nil
	}
	job, err := q.store.ClaimNextOn(ctx, s.Runner.Device)
	if err != nil || job == nil {
		return false, err
	}
	if err := q.runClaimed(ctx, s, job); errors.Is(err, ErrWorkerUnavailable) {
		return false, err
	}
	return true, nil
}

func (q *QueueRunner) runClaimed(ctx context.Context, s *slotState, job *store.QueueJob) error {
	rec := context.WithoutCancel(ctx)
	// The job's own context: the queue stopping ends it with ErrQueueStopped
	// (back to pending), a cancel with context.Canceled (cancelled).
	jctx, jcancel := context.WithCancelCause(rec)
	defer jcancel(nil)
	s.mu.Lock()
	s.running, s.cancel = job.ID, jcancel
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running, s.cancel = 0, nil
		s.mu.Unlock()
	}()
	defer watchCancel(ctx, q.Poll, ErrQueueStopped, func() (bool, error) {
		return q.store.CancelRequested(rec, job.ID)
	}, jcancel)()

	q.emit(s, QueueEvent{Kind: QueueStarted, Job: job})
	out, err := q.execute(jctx, s, job)
	if ctx.Err() != nil && err != nil {
		err = fmt.Errorf("%w: %w", ErrQueueStopped, err)
	}
	ended, gerr := q.store.GetQueueJob(rec, job.ID)
	if gerr != nil {
		ended = job
	}
	q.emit(s, QueueEvent{Kind: QueueFinished, Job: ended, Outcome: out, Err: err})
	return err
}

// execute checks the files the job names again, sets its output folder and runs it.
func (q *QueueRunner) execute(ctx context.Context, s *slotState, job *store.QueueJob) (*JobOutcome, error) {
	rec := context.WithoutCancel(ctx)
	r := s.Runner
	req := job.Request
	if err := req.PrepareQueued(); err != nil {
		return nil, r.fail(rec, job.ID, toJobError(ctx, err))
	}
	req.OutputDir = filepath.Join(r.ImagesFolder(), time.Now().Format("2006-01-02"))
	if err := os.MkdirAll(req.OutputDir, 0o755); err != nil {
		return nil, r.fail(rec, job.ID, &failure.JobError{Op: "create the image folder", Err: err, Code: failure.ErrInternal,
			Message: fmt.Sprintf("create the image folder: %v (check its permissions, or set %s)", err, paths.HomeEnv)})
	}
	var last time.Time
	onEvent := func(m protocol.Message) {
		if p, ok := m.(protocol.Progress); ok && p.Stage == spec.StageDenoising && (time.Since(last) >= q.ProgressEvery || p.Step == p.Total) {
			last = time.Now()
			_ = q.store.SetJobProgress(rec, job.ID, p.Step, p.Total) // progress is a hint; losing one is harmless
		}
		q.emit(s, QueueEvent{Kind: QueueMessage, Job: job, Message: m})
	}
	return r.execute(ctx, job.ID, job.UID, req, onEvent, true)
}

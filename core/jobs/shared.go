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
	"atelier/core/request"
	"atelier/core/store"
)

// This file shares one worker per device between Atelier processes
// (docs/architecture.md, "One worker per device, whoever asks"): a Runner
// that shares its device starts its worker only while its process holds the
// device's lease; otherwise its jobs are submitted to the holder through the
// history, and it relays what the holder writes back.

// Defaults of the sharing's polls. They are how soon a change is seen, not
// timings anything depends on.
const (
	// DefaultWatchPoll is how often a submitter reads its job's row.
	DefaultWatchPoll = 200 * time.Millisecond
	// leaseRecheck is how long a held lease is trusted before it is
	// renewed (and checked) again.
	leaseRecheck = 10 * time.Second
	// relayEvery throttles the progress a holder writes for a submitter.
	relayEvery = 200 * time.Millisecond
)

// sharing is a Runner's device lease state.
type sharing struct {
	device string
	poll   time.Duration

	mu      sync.Mutex
	held    bool
	checked time.Time
	holder  store.Lease // the other holder, when not held
}

// ShareDevice makes r share its device with the other Atelier processes on
// this history: r starts a worker only while this process holds device's
// lease (taking it when it is free or its holder is gone), and Run submits
// the job to the holder otherwise. device names the worker's device as the
// queue does (cpu, cuda:N, mps; "auto" for a worker that picks its own). The
// process gives its leases up with store.ReleaseMyLeases once its workers
// have stopped.
func (r *Runner) ShareDevice(device string) {
	r.share = &sharing{device: device, poll: DefaultWatchPoll}
}

// SharedDevice is the device r shares, or "" when it does not.
func (r *Runner) SharedDevice() string {
	if r.share == nil {
		return ""
	}
	return r.share.device
}

// HoldsDevice reports whether r may start its worker: it does not share its
// device, or this process holds (or has just taken) the device's lease. When
// another live process holds it, holder is that process's lease.
func (r *Runner) HoldsDevice(ctx context.Context) (held bool, holder store.Lease, err error) {
	sh := r.share
	if sh == nil {
		return true, store.Lease{}, nil
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.held && time.Since(sh.checked) < leaseRecheck {
		return true, store.Lease{}, nil
	}
	if !sh.held {
		// A read first: the usual answer (held by the other process) needs no
		// write lock.
		l, live, err := r.store.DeviceLease(ctx, sh.device)
		if err != nil {
			return false, store.Lease{}, err
		}
		if live && !l.Mine {
			sh.holder = l
			return false, l, nil
		}
	}
	held, l, err := r.store.AcquireLease(ctx, sh.device)
	if err != nil {
		return false, store.Lease{}, err
	}
	wasHeld := sh.held
	sh.held, sh.checked = held, time.Now()
	if !held {
		sh.holder = l
		return false, l, nil
	}
	if !wasHeld {
		go r.renewLease(sh)
	}
	return true, store.Lease{}, nil
}

// renewLease renews sh's lease every leaseRecheck, also while a long job
// keeps the runner from asking, since a holder that cannot be probed (no
// /proc) keeps its lease only by renewing it. It stops when the lease is
// lost or released, or the history closed.
func (r *Runner) renewLease(sh *sharing) {
	t := time.NewTicker(leaseRecheck)
	defer t.Stop()
	for range t.C {
		err := r.store.RenewLease(context.Background(), sh.device)
		sh.mu.Lock()
		if err != nil {
			sh.held = false // asked again on the next job
		} else {
			sh.checked = time.Now()
		}
		held := sh.held
		sh.mu.Unlock()
		if !held {
			return
		}
	}
}

// runSubmitted runs a prepared request on the worker of the process that
// holds r's device: it records the job for that process, relays what it
// writes as the worker's messages, cancels it when ctx ends, and runs it here
// after all when the holder goes away first.
func (r *Runner) runSubmitted(ctx context.Context, req request.Request, onEvent func(protocol.Message)) (*JobOutcome, error) {
	rec := context.WithoutCancel(ctx)
	sh := r.share
	uid := store.NewJobUID(time.Now())
	id, err := r.store.SubmitRelayed(rec, uid, req, sh.device)
	if err != nil {
		return nil, err
	}
	var last store.RelayState
	tick := time.NewTicker(sh.poll)
	defer tick.Stop()
	done := ctx.Done()
	cancelled := false
	var grace <-chan time.Time
	for {
		st, err := r.store.GetRelayState(rec, id)
		if err != nil {
			return nil, err
		}
		relayChanges(uid, last, st, onEvent)
		last = st
		if st.Finished() {
			return r.submittedOutcome(rec, id, uid, st)
		}
		if cancelled && st.Status != store.StatusRunning {
			// Cancelled while no one runs it (or after its holder died):
			// it must not run later.
			_, _ = r.store.CancelJob(rec, id)
		}
		if !cancelled {
			// The holder may have gone (kill -9): then this process takes
			// the device and runs what is left, this job included.
			if mine, _, err := r.HoldsDevice(rec); err == nil && mine {
				return r.serveUntil(ctx, id, uid, onEvent)
			}
		}
		select {
		case <-done:
			done, cancelled = nil, true
			// An error means it is already over: its end is read next turn.
			_, _ = r.store.CancelJob(rec, id)
			t := time.NewTimer(r.CancelGrace)
			defer t.Stop()
			grace = t.C
		case <-grace:
			return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "the job was cancelled"}
		case <-tick.C:
		}
	}
}

// relayChanges turns the changes of a submitted job's row into the messages
// a local worker would have sent.
func relayChanges(uid string, was, now store.RelayState, onEvent func(protocol.Message)) {
	if now.Stage != "" && (now.Stage != was.Stage || now.Step != was.Step || now.Total != was.Total) {
		onEvent(protocol.Progress{ID: uid, Stage: now.Stage, Step: now.Step, Total: now.Total})
	}
	if now.PreviewPath != "" && (now.PreviewPath != was.PreviewPath || now.PreviewStep != was.PreviewStep) {
		onEvent(protocol.Preview{ID: uid, Step: now.PreviewStep, Path: now.PreviewPath})
	}
}

// submittedOutcome reads a finished submitted job's outcome from its row.
func (r *Runner) submittedOutcome(ctx context.Context, id int64, uid string, st store.RelayState) (*JobOutcome, error) {
	j, err := r.store.GetJob(ctx, id)
	if err != nil {
		return nil, err
	}
	if j.Status != store.StatusDone {
		return nil, &failure.JobError{Code: failure.ErrorCode(j.ErrorCode), Message: j.ErrorMessage, Detail: j.ErrorDetail, Field: j.ErrorField}
	}
	out := &JobOutcome{JobID: id, UID: uid, Metrics: j.Metrics, ControlImages: st.ControlImages}
	for _, im := range j.Images {
		out.Images = append(out.Images, protocol.ImageResult{Path: im.Path, Seed: im.Seed, Width: im.Width, Height: im.Height})
	}
	return out, nil
}

// serveUntil runs, once this process holds the device, the jobs submitted to
// it in order until job own is over: the ones submitted before it (for their
// waiting submitters), then own, whose messages go to onEvent.
func (r *Runner) serveUntil(ctx context.Context, own int64, uid string, onEvent func(protocol.Message)) (*JobOutcome, error) {
	rec := context.WithoutCancel(ctx)
	for {
		st, err := r.store.GetRelayState(rec, own)
		if err != nil {
			return nil, err
		}
		if st.Finished() {
			return r.submittedOutcome(rec, own, uid, st)
		}
		if ctx.Err() != nil {
			if _, err := r.store.CancelJob(rec, own); err == nil {
				continue // cancelled before it ran: read its end
			}
			return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "the job was cancelled before it started"}
		}
		release, err := r.acquire(ctx)
		if err != nil {
			continue
		}
		job, err := r.store.ClaimRelayed(rec, r.share.device)
		if err != nil || job == nil {
			release()
			if err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("job %d is %s and cannot be run here; run it again", own, st.Status)
		}
		if job.ID == own {
			out, err := r.runClaimedSubmitted(ctx, job, context.Canceled, onEvent)
			release()
			return out, err
		}
		_, _ = r.runClaimedSubmitted(ctx, job, ErrQueueStopped, nil) // its submitter reads its outcome
		release()
	}
}

// serveSubmitted runs the oldest job submitted to r's device, if any, for its
// submitter; the caller holds the lease and r's slot. When ctx ends mid-job,
// the job goes back to pending (its submitter takes over). It reports whether
// there was one.
func (r *Runner) serveSubmitted(ctx context.Context) (bool, error) {
	if r.share == nil {
		return false, nil
	}
	job, err := r.store.ClaimRelayed(context.WithoutCancel(ctx), r.share.device)
	if err != nil || job == nil {
		return false, err
	}
	_, err = r.runClaimedSubmitted(ctx, job, ErrQueueStopped, nil)
	if errors.Is(err, ErrWorkerUnavailable) {
		return false, err
	}
	return true, nil
}

// runClaimedSubmitted runs a claimed submitted job; the caller holds r's slot.
// Its messages go to onEvent when it is this process's own job; otherwise
// (onEvent nil) they are written to its row for its submitter. ctx ending
// stops it with stopCause (ErrQueueStopped: back to pending); a cancel asked
// through the history cancels it.
func (r *Runner) runClaimedSubmitted(ctx context.Context, job *store.QueueJob, stopCause error, onEvent func(protocol.Message)) (*JobOutcome, error) {
	rec := context.WithoutCancel(ctx)
	jctx, jcancel := context.WithCancelCause(rec)
	defer jcancel(nil)
	defer watchCancel(ctx, r.share.poll, stopCause, func() (bool, error) {
		return r.store.CancelRequested(rec, job.ID)
	}, jcancel)()
	req := job.Request
	if err := req.PrepareQueued(); err != nil {
		return nil, r.fail(rec, job.ID, toJobError(jctx, err))
	}
	req.OutputDir = filepath.Join(r.paths.Images, time.Now().Format("2006-01-02"))
	if err := os.MkdirAll(req.OutputDir, 0o755); err != nil {
		return nil, r.fail(rec, job.ID, &failure.JobError{Op: "create the image folder", Err: err, Code: failure.ErrInternal,
			Message: fmt.Sprintf("create the image folder: %v (check its permissions, or set %s)", err, paths.HomeEnv)})
	}
	own := onEvent != nil
	events := onEvent
	if !own {
		events = relayWriter(rec, r.store, job.ID)
	}
	return r.execute(jctx, job.ID, job.UID, req, events, !own)
}

// relayWriter writes a job's messages to its row for the submitter that
// watches it: the stage and step (at most every relayEvery, and always the
// last step), each preview, and the control images before the result.
func relayWriter(ctx context.Context, st *store.Store, id int64) func(protocol.Message) {
	var last time.Time
	var stage string
	return func(m protocol.Message) {
		// The row is a hint for the submitter's display; a lost write is
		// harmless, the outcome is recorded by the runner.
		switch m := m.(type) {
		case protocol.Progress:
			if m.Stage != stage || m.Step == m.Total || time.Since(last) >= relayEvery {
				stage, last = m.Stage, time.Now()
				_ = st.SetRelayProgress(ctx, id, m.Stage, m.Step, m.Total)
			}
		case protocol.Preview:
			_ = st.SetRelayPreview(ctx, id, m.Step, m.Path)
		case protocol.Result:
			_ = st.SetControlImages(ctx, id, m.ControlImages)
		}
	}
}

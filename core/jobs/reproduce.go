package jobs

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"atelier/core/failure"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
)

// Reproduce runs req again on the generator without recording a job: its
// images go into dir (absolute; the caller removes it), not into the history's
// folders. It checks req and the files it names as Run does, and waits for
// the generator as Run does, so a check from the window waits for the queue's
// job. When another Atelier process holds r's device, the check runs on that
// process's worker (through the history's reproductions table, never as a
// job), into dir all the same. A worker failure is a *failure.JobError; input
// that cannot run is a *request.ValidationError or a *failure.JobError naming
// the field.
func (r *Runner) Reproduce(ctx context.Context, req request.Request, dir string, onEvent func(protocol.Message)) (*protocol.Result, error) {
	if onEvent == nil {
		onEvent = func(protocol.Message) {}
	}
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("reproduce: the folder %q must be absolute", dir)
	}
	if err := req.Prepare(); err != nil {
		return nil, err
	}
	req.OutputDir = dir
	if held, _, err := r.HoldsDevice(ctx); err != nil {
		return nil, err
	} else if !held {
		return r.reproduceSubmitted(ctx, req, onEvent)
	}
	return r.reproduceHere(ctx, req, onEvent)
}

// reproduceHere runs a prepared check on r's own worker, once it is free.
func (r *Runner) reproduceHere(ctx context.Context, req request.Request, onEvent func(protocol.Message)) (*protocol.Result, error) {
	release, err := r.acquire(ctx)
	if err != nil {
		return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "the check was cancelled before it started"}
	}
	defer release()
	return r.reproduceOn(ctx, req, onEvent)
}

// reproduceOn runs a prepared check on r's worker; the caller holds the slot.
func (r *Runner) reproduceOn(ctx context.Context, req request.Request, onEvent func(protocol.Message)) (*protocol.Result, error) {
	// Named like a job, so that the worker's files and log lines read like any
	// job's, and marked, since it names no row of the history.
	uid := "verify-" + store.NewJobUID(time.Now())
	ch, err := r.gen.Submit(ctx, uid, req)
	if err != nil {
		return nil, toJobError(ctx, err)
	}
	final, cancelled := r.follow(ctx, uid, ch, onEvent)
	switch m := final.(type) {
	case protocol.Result:
		return &m, nil
	case protocol.Error:
		return nil, &failure.JobError{Code: m.Code, Message: m.Message, Detail: m.Detail, Field: m.Field}
	}
	if cancelled {
		return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "the check was cancelled"}
	}
	return nil, &failure.JobError{Code: failure.ErrWorkerCrashed,
		Message: "the worker stopped without finishing; run the check again (the next job starts a new worker)"}
}

// reproduceSubmitted asks the process holding r's device to run the check,
// relays what it writes as the worker's messages, cancels it when ctx ends,
// and runs it here after all when the holder goes away first. The row is
// deleted at the end, whatever happened.
func (r *Runner) reproduceSubmitted(ctx context.Context, req request.Request, onEvent func(protocol.Message)) (*protocol.Result, error) {
	rec := context.WithoutCancel(ctx)
	sh := r.share
	id, err := r.store.SubmitReproduction(rec, req, sh.device)
	if err != nil {
		return nil, err
	}
	defer func() { _ = r.store.DeleteReproduction(rec, id) }() // a row left behind is deleted by the next holder
	uid := fmt.Sprintf("verify-%d", id)
	var last store.RelayState
	tick := time.NewTicker(sh.poll)
	defer tick.Stop()
	done := ctx.Done()
	var grace <-chan time.Time
	for {
		st, err := r.store.GetReproduction(rec, id)
		if err != nil {
			return nil, err
		}
		relayChanges(uid, last, st.RelayState, onEvent)
		last = st.RelayState
		if o := st.Outcome; o != nil {
			if o.Error != nil {
				return nil, o.Error
			}
			if o.Result == nil {
				return nil, &failure.JobError{Code: failure.ErrInternal, Message: "the process that ran the check recorded no result; run the check again"}
			}
			return o.Result, nil
		}
		if done != nil {
			// The holder may have gone (kill -9) or ended: then this process
			// takes the device and runs the check itself, unless the holder
			// finished it meanwhile.
			if mine, _, err := r.HoldsDevice(rec); err == nil && mine {
				if st, err := r.store.GetReproduction(rec, id); err == nil && st.Outcome != nil {
					continue
				}
				_ = r.store.DeleteReproduction(rec, id)
				return r.reproduceHere(ctx, req, onEvent)
			}
		}
		select {
		case <-done:
			done = nil
			_ = r.store.CancelReproduction(rec, id)
			if st.Status == store.StatusPending {
				return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "the check was cancelled before it started"}
			}
			t := time.NewTimer(r.CancelGrace)
			defer t.Stop()
			grace = t.C
		case <-grace:
			return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "the check was cancelled"}
		case <-tick.C:
		}
	}
}

// serveReproduction runs the oldest check asked of r's device by another
// process, if any, into its asker's folder; the caller holds the lease and
// r's slot. When ctx ends mid-check, it is given back (its asker takes it
// over). It reports whether there was one.
func (r *Runner) serveReproduction(ctx context.Context) (bool, error) {
	if r.share == nil {
		return false, nil
	}
	rec := context.WithoutCancel(ctx)
	rp, err := r.store.ClaimReproduction(rec, r.share.device)
	if err != nil || rp == nil {
		return false, err
	}
	jctx, jcancel := context.WithCancelCause(rec)
	defer jcancel(nil)
	defer watchCancel(ctx, r.share.poll, ErrQueueStopped, func() (bool, error) {
		return r.store.ReproductionCancelRequested(rec, rp.ID)
	}, jcancel)()
	res, err := r.reproduceOn(jctx, rp.Request, reproductionWriter(rec, r.store, rp.ID))
	if ctx.Err() != nil && res == nil {
		_ = r.store.RequeueReproduction(rec, rp.ID)
		return true, nil
	}
	var jerr *failure.JobError
	if err != nil {
		jerr = toJobError(jctx, err)
	}
	_ = r.store.FinishReproduction(rec, rp.ID, res, jerr) // its asker may have gone and deleted it
	return true, nil
}

// reproductionWriter writes a check's progress and previews to its row for
// the asker, as relayWriter does for a job.
func reproductionWriter(ctx context.Context, st *store.Store, id int64) func(protocol.Message) {
	var last time.Time
	var stage string
	return func(m protocol.Message) {
		// A hint for the asker's display; a lost write is harmless.
		switch m := m.(type) {
		case protocol.Progress:
			if m.Stage != stage || m.Step == m.Total || time.Since(last) >= relayEvery {
				stage, last = m.Stage, time.Now()
				_ = st.SetReproductionProgress(ctx, id, m.Stage, m.Step, m.Total)
			}
		case protocol.Preview:
			_ = st.SetReproductionPreview(ctx, id, m.Step, m.Path)
		}
	}
}

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
// job. A worker failure is a *failure.JobError; input that cannot run is a
// *request.ValidationError or a *failure.JobError naming the field.
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
	release, err := r.acquire(ctx)
	if err != nil {
		return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "the check was cancelled before it started"}
	}
	defer release()
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

package jobs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"atelier/core/failure"
	"atelier/core/paths"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
)

// DefaultCancelGrace is how long Run waits, after asking the generator to
// cancel, for the job to end before recording it cancelled anyway. It is longer
// than the bridge's own grace (30 s), so that the bridge's clearer message
// usually arrives first.
const DefaultCancelGrace = 45 * time.Second

// Runner runs one request from start to finish: it checks the input, records
// the job, drives the generator and records the outcome. The CLI and the UI
// both go through it, so a job is bookkept the same way whoever starts it.
type Runner struct {
	store *store.Store
	gen   Generator
	paths paths.Paths

	// CancelGrace bounds the wait for a cancelled job to end (a worker stuck
	// outside its denoising loop only sees the cancel later, if at all).
	CancelGrace time.Duration

	// Device is the device the runner's worker runs on, as the queue names
	// it (cpu, cuda:N): a queue job pinned to a device runs only on a runner
	// of that device, and each job records it. Empty: the runner takes any
	// queue job, and a job records the device its worker reported. A name no
	// job can be pinned to (a Ray slot's "ray") takes only unpinned jobs and
	// records the device its worker reported.
	Device string

	// share is the device lease r needs before it starts a worker (nil:
	// none); see ShareDevice.
	share *sharing

	// slot is held while a job runs on gen: a worker runs one job at a
	// time, so a Generate from the window waits for the queue's job.
	slot chan struct{}

	// imagesDir, when set, replaces paths.Images (output.go).
	imagesDir atomic.Pointer[string]
}

// NewRunner returns a Runner that records into history and generates with
// gen, writing images below dirs.Images.
func NewRunner(history *store.Store, gen Generator, dirs paths.Paths) *Runner {
	return &Runner{store: history, gen: gen, paths: dirs, CancelGrace: DefaultCancelGrace, slot: make(chan struct{}, 1)}
}

// Capabilities returns the worker's capabilities from its latest hello when
// the generator knows them (the bridge does), or nil before a worker started.
func (r *Runner) Capabilities() *protocol.Capabilities {
	if c, ok := r.gen.(interface{ Capabilities() *protocol.Capabilities }); ok {
		return c.Capabilities()
	}
	return nil
}

// Store is the history the runner records into.
func (r *Runner) Store() *store.Store { return r.store }

// acquire waits for the generator to be free; the caller calls release.
func (r *Runner) acquire(ctx context.Context) (release func(), err error) {
	select {
	case r.slot <- struct{}{}:
		return func() { <-r.slot }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Run generates req and passes every message from the generator to onEvent
// (which may be nil), on the calling goroutine. The images go into
// Paths.Images/YYYY-MM-DD whatever req.OutputDir says.
//
// Input that is wrong is refused before anything is recorded or written, with
// a *ValidationError or a *JobError naming the field. Once the job is
// recorded, a failure is returned as a *JobError and recorded too; cancelling
// ctx cancels the job, which is then recorded as cancelled. If the images were
// made but recording them failed, they are removed and the job fails (code
// disk_full when the history's disk is full), so that a job's files are
// either all in the history or all gone.
func (r *Runner) Run(ctx context.Context, req request.Request, onEvent func(protocol.Message)) (*JobOutcome, error) {
	if onEvent == nil {
		onEvent = func(protocol.Message) {}
	}

	// 1. Check the request and what it names on disk, and fix the seed now,
	// so that the history can reproduce the job.
	if err := req.Prepare(); err != nil {
		return nil, err
	}

	// 2. Images go into one folder per (local) day.
	now := time.Now()
	req.OutputDir = filepath.Join(r.ImagesFolder(), now.Format("2006-01-02"))
	if err := os.MkdirAll(req.OutputDir, 0o755); err != nil {
		return nil, fmt.Errorf("create the image folder: %w (check its permissions, or set %s)", err, paths.HomeEnv)
	}

	// A device held by another process runs the job there.
	if held, _, err := r.HoldsDevice(ctx); err != nil {
		return nil, err
	} else if !held {
		return r.runSubmitted(ctx, req, onEvent)
	}

	// 3. Only a request that can run gets a row, once the worker is free.
	if ctx.Err() != nil {
		return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "the job was cancelled before it started"}
	}
	release, err := r.acquire(ctx)
	if err != nil {
		return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "the job was cancelled before it started"}
	}
	defer release()
	// From here on the outcome is recorded even when ctx is cancelled.
	rec := context.WithoutCancel(ctx)
	uid := store.NewJobUID(now)
	jobID, err := r.store.CreateJob(rec, uid, req)
	if err != nil {
		return nil, err
	}
	return r.execute(ctx, jobID, uid, req, onEvent, false)
}

// execute generates a recorded job and records its outcome; the caller holds
// the slot.
//
// For a queue job (queued), a generator that cannot take the job at all (the
// worker does not start) is not the job's fault: the job goes back to
// pending and the error wraps ErrWorkerUnavailable, so that the queue waits
// instead of failing every job in turn.
func (r *Runner) execute(ctx context.Context, jobID int64, uid string, req request.Request, onEvent func(protocol.Message), queued bool) (*JobOutcome, error) {
	rec := context.WithoutCancel(ctx)

	// 4. Generate.
	ch, err := r.gen.Submit(ctx, uid, req)
	if err != nil {
		if ctx.Err() != nil && errors.Is(context.Cause(ctx), ErrQueueStopped) && r.store.RequeueJob(rec, jobID) == nil {
			return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "the queue stopped; the job is pending again"}
		}
		jerr := toJobError(ctx, err)
		if queued && ctx.Err() == nil && jerr.Code != failure.ErrInvalidRequest && jerr.Code != failure.ErrCancelled &&
			r.store.RequeueJob(rec, jobID) == nil {
			return nil, fmt.Errorf("%w: %w", ErrWorkerUnavailable, jerr)
		}
		return nil, r.fail(rec, jobID, jerr)
	}
	// Where it runs is known once the worker took it: recorded now, so that
	// a job that crashes its worker says which one.
	_ = r.store.SetJobPlacement(rec, jobID, r.placement()) // a hint; a failed write must not fail the job
	final, cancelled := r.follow(ctx, uid, ch, onEvent)
	res, isResult := final.(protocol.Result)
	werr, isError := final.(protocol.Error)

	// 5. Record the outcome.
	switch {
	case isResult:
		out := &JobOutcome{JobID: jobID, UID: uid, Images: res.Images, Metrics: res.Metrics, ControlImages: res.ControlImages}
		if err := r.store.FinishJob(rec, jobID, res.Metrics, res.Images); err != nil {
			return nil, r.fail(rec, jobID, r.unrecorded(res, err))
		}
		return out, nil
	case (final == nil || werr.Code == failure.ErrCancelled) && cancelled && errors.Is(context.Cause(ctx), ErrQueueStopped):
		// The queue was stopped, not the job: it goes back to pending.
		if err := r.store.RequeueJob(rec, jobID); err != nil {
			return nil, r.fail(rec, jobID, &failure.JobError{Code: failure.ErrCancelled, Message: "the job was cancelled"})
		}
		return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "the queue stopped; the job is pending again"}
	case isError:
		jerr := &failure.JobError{Code: werr.Code, Message: werr.Message, Detail: werr.Detail, Field: werr.Field}
		if !jerr.Code.Valid() {
			jerr.Detail = strings.TrimSpace(fmt.Sprintf("unknown error code %q\n%s", jerr.Code, jerr.Detail))
			jerr.Code = failure.ErrInternal
		}
		return nil, r.fail(rec, jobID, jerr)
	case cancelled:
		return nil, r.fail(rec, jobID, &failure.JobError{Code: failure.ErrCancelled, Message: "the job was cancelled"})
	default:
		return nil, r.fail(rec, jobID, &failure.JobError{Code: failure.ErrWorkerCrashed,
			Message: "the worker stopped without finishing the job; run it again (the next job starts a new worker)"})
	}
}

// placement is where the runner's jobs run now: the host and pid the
// worker's hello names (behind the Ray proxy, its actor's node and pid), else
// this host and the worker process's pid; the runner's Device, or the device
// the worker reports when Device is empty or names no device a job can be
// pinned to (a Ray slot).
func (r *Runner) placement() store.Placement {
	p := store.Placement{Host: hostname(), Device: r.Device}
	if g, ok := r.gen.(interface{ WorkerPID() int }); ok {
		p.WorkerPID = g.WorkerPID()
	}
	g, ok := r.gen.(interface {
		Hello() (protocol.Hello, bool)
	})
	if !ok {
		return p
	}
	h, ok := g.Hello()
	if !ok {
		return p
	}
	if h.Host != "" {
		p.Host = h.Host
	}
	if h.PID > 0 {
		p.WorkerPID = h.PID
	}
	if p.Device == "" || store.CheckDevice(p.Device) != nil {
		p.Device = h.Device
	}
	return p
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return h
}

// follow forwards messages until the job's result or error. It returns that
// message, or nil if the stream ended without one, and whether ctx cancelled.
func (r *Runner) follow(ctx context.Context, uid string, ch <-chan protocol.Message, onEvent func(protocol.Message)) (protocol.Message, bool) {
	// The generator closes ch after the final message; draining whatever is
	// left keeps it from blocking if it sends more, or if we give up waiting.
	defer func() {
		go func() {
			for range ch {
			}
		}()
	}()
	done := ctx.Done()
	var grace <-chan time.Time
	cancelled := false
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				return nil, cancelled
			}
			onEvent(m)
			switch m.(type) {
			case protocol.Result, protocol.Error:
				if id := protocol.IDOf(m); id == uid || id == "" {
					return m, cancelled
				}
			}
		case <-done:
			done, cancelled = nil, true
			// An error here means the job is already over: its final
			// message is on its way.
			_ = r.gen.Cancel(uid)
			t := time.NewTimer(r.CancelGrace)
			defer t.Stop()
			grace = t.C
		case <-grace:
			return nil, true
		}
	}
}

// unrecorded removes the files of a job whose result the history could not
// record, since a file without its history entry is lost to the gallery,
// and says what happened.
func (r *Runner) unrecorded(res protocol.Result, cause error) *failure.JobError {
	files := slices.Concat(imagePaths(res.Images), res.ControlImages)
	var kept []string
	for _, p := range files {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			kept = append(kept, fmt.Sprintf("%s (%v)", p, err))
		}
	}
	code, what := failure.ErrInternal, "the history could not record them"
	if store.IsDiskFull(cause) {
		code, what = failure.ErrDiskFull, "the disk holding the history is full, so it could not record them"
	}
	msg := fmt.Sprintf("the job's %d file(s) were made, but %s; ", len(files), what)
	if kept == nil {
		msg += "they were removed, so that no image is left without its history entry"
	} else {
		msg += "removing them failed, so these are on disk without a history entry: " + strings.Join(kept, ", ")
	}
	if code == failure.ErrDiskFull {
		msg += fmt.Sprintf(". Free some space on that disk (or set %s to a folder on another disk), then generate again", paths.HomeEnv)
	}
	return &failure.JobError{Op: "record the result", Err: cause, Code: code, Message: msg, Detail: cause.Error()}
}

func imagePaths(images []protocol.ImageResult) []string {
	out := make([]string, len(images))
	for i, im := range images {
		out[i] = im.Path
	}
	return out
}

func (r *Runner) fail(ctx context.Context, jobID int64, jerr *failure.JobError) error {
	if err := r.store.FailJob(ctx, jobID, jerr); err != nil {
		return fmt.Errorf("%w (and recording it failed: %v)", jerr, err)
	}
	return jerr
}

// toJobError keeps a generator's *JobError and wraps anything else.
func toJobError(ctx context.Context, err error) *failure.JobError {
	var jerr *failure.JobError
	if errors.As(err, &jerr) {
		return jerr
	}
	if ctx.Err() != nil {
		return &failure.JobError{Op: "start the job", Err: err, Code: failure.ErrCancelled,
			Message: "the job was cancelled before it started", Detail: err.Error()}
	}
	return &failure.JobError{Op: "start the job", Err: err, Code: failure.ErrInternal, Message: "could not start the job: " + err.Error()}
}

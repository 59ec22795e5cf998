package ui

import (
	"context"
	"errors"

	"atelier/core/jobs"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
	"atelier/core/verify"
)

// This file is the one place where ui reads the worker protocol: the views
// take the small event below, so a change of the wire format changes this
// file only.

// eventKind is what an event reports.
type eventKind int

const (
	evOther    eventKind = iota // a message the views do not show (accepted, result, error …)
	evLoading                   // the worker is starting: note says what it does
	evHello                     // the worker is ready, on device
	evProgress                  // stage, at step of total
	evPreview                   // a preview image (file preview) at step
	evJob                       // job step of total of a batch count: the studio's own, never the worker's
)

// event is one report of a running job, as the views show it.
type event struct {
	kind        eventKind
	stage       string
	step, total int
	elapsed     float64 // seconds since the worker accepted the job
	note        string
	device      string
	preview     string // the preview image's file
}

// eventOf converts a worker message into the views' event.
func eventOf(m protocol.Message) event {
	switch m := m.(type) {
	case protocol.Loading:
		return event{kind: evLoading, note: m.Message}
	case protocol.Hello:
		return event{kind: evHello, device: m.Device}
	case protocol.Progress:
		return event{kind: evProgress, stage: m.Stage, step: m.Step, total: m.Total, elapsed: m.ElapsedS, note: m.Note}
	case protocol.Preview:
		return event{kind: evPreview, step: m.Step, preview: m.Path}
	}
	return event{}
}

// foldInto adds a progress event to a queue job's live progress (core's
// ETA bookkeeping, which reads the message itself).
func (e event) foldInto(l *jobs.Live) {
	if e.kind != evProgress {
		return
	}
	l.Update(protocol.Progress{Stage: e.stage, Step: e.step, Total: e.total, ElapsedS: e.elapsed})
}

// Runner runs one job, streaming the worker's messages to onMessage from its
// own goroutine. Cancelling ctx cancels the job. jobs.Runner implements it.
type Runner interface {
	Run(ctx context.Context, req request.Request, onMessage func(protocol.Message)) (*jobs.JobOutcome, error)
}

// generator is a Runner as the views see it: a stream of events.
type generator interface {
	Run(ctx context.Context, req request.Request, onEvent func(event)) (*jobs.JobOutcome, error)
}

// runnerEvents adapts a Runner to the views' events.
type runnerEvents struct{ r Runner }

func eventsOf(r Runner) runnerEvents { return runnerEvents{r} }

func (g runnerEvents) Run(ctx context.Context, req request.Request, onEvent func(event)) (*jobs.JobOutcome, error) {
	return g.r.Run(ctx, req, func(m protocol.Message) { onEvent(eventOf(m)) })
}

// Capabilities are those of the runner's worker, when the runner knows them.
func (g runnerEvents) Capabilities() *protocol.Capabilities {
	if src, ok := g.r.(capabilitySource); ok {
		return src.Capabilities()
	}
	return nil
}

// reproducible is a generator that can regenerate a recorded job without
// recording it (runnerEvents over jobs.Runner): the gallery's "Check it
// reproduces".
type reproducible interface {
	checkReproduces(ctx context.Context, st verify.JobStore, jobID int64, tempRoot string, onEvent func(event)) (*verify.Report, error)
}

// checkReproduces runs core's check of job jobID through the runner, its
// progress as the views' events; an error wraps verify.ErrBadInput when the
// job cannot be checked.
func (g runnerEvents) checkReproduces(ctx context.Context, st verify.JobStore, jobID int64, tempRoot string, onEvent func(event)) (*verify.Report, error) {
	rg, ok := g.r.(verify.Regenerator)
	if !ok {
		return nil, errors.New("this studio's generator cannot regenerate a job")
	}
	return verify.Job(ctx, st, rg, jobID, verify.Options{TempRoot: tempRoot,
		OnEvent: func(m protocol.Message) { onEvent(eventOf(m)) }})
}

// slowCPUWarning is the runner's warning for a size that takes minutes a step
// on the CPU, or "" (also when the runner cannot tell).
func (g runnerEvents) slowCPUWarning(ctx context.Context, req request.Request) string {
	if w, ok := g.r.(interface {
		SlowCPUWarning(context.Context, request.Request) string
	}); ok {
		return w.SlowCPUWarning(ctx, req)
	}
	return ""
}

// queueEvent is what the queue runner reports, as the queue view takes it.
type queueEvent struct {
	kind   string // jobs.QueueStarted …
	job    *store.QueueJob
	ev     event // with jobs.QueueMessage
	err    error
	paused bool         // with jobs.QueueIdle
	holder *store.Lease // with jobs.QueueDeviceHeld
}

func queueEventOf(e jobs.QueueEvent) queueEvent {
	return queueEvent{kind: e.Kind, job: e.Job, ev: eventOf(e.Message), err: e.Err, paused: e.Paused, holder: e.Holder}
}

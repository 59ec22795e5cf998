package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"atelier/core/failure"
	"atelier/core/jobs"
	"atelier/core/protocol"
	"atelier/core/request"
)

// ErrNoSuchJob is returned by Cancel for an id that is not running.
var ErrNoSuchJob = errors.New("no such running job")

// Bridge runs jobs on one worker process at a time, starting it on first use and
// again after it failed. It implements jobs.Generator. Its methods are safe for
// concurrent use.
type Bridge struct {
	cfg     Config
	pingSeq atomic.Int64

	mu        sync.Mutex
	seq       int64                // worker processes started
	w         *worker              // the worker ready for jobs, or nil
	starting  *startAttempt        // the start in progress, or nil
	workers   map[*worker]struct{} // every process not yet reaped, for Close
	job       *job                 // the job in flight (one at a time), or nil
	hello     protocol.Hello
	helloOK   bool
	tail      *ring // stderr of the latest worker
	failures  int   // failures in a row, for the backoff
	notBefore time.Time
	pings     map[string]chan struct{}
	closed    bool
	closing   chan struct{}
	settings  workerSettings // what Reconfigure changed (reconfigure.go)
}

var _ jobs.Generator = (*Bridge)(nil)

// New returns a Bridge; the worker starts with the first Submit, Start or Ping.
func New(cfg Config) *Bridge {
	return &Bridge{
		cfg:     cfg.withDefaults(),
		workers: map[*worker]struct{}{},
		tail:    newRing(stderrTailLines),
		pings:   map[string]chan struct{}{},
		closing: make(chan struct{}),
	}
}

func (b *Bridge) log(id string) *slog.Logger { return b.cfg.Logger.With("id", id) }

// job is one Submit: its messages go through an unbounded queue, so that a slow
// reader of the channel never blocks the worker's stdout.
type job struct {
	id  string
	out chan protocol.Message

	qmu    sync.Mutex
	queue  []protocol.Message
	qdone  bool
	wake   chan struct{}
	endedC chan struct{} // closed when the job has its final message

	// Guarded by Bridge.mu.
	w          *worker
	accepted   bool
	ended      bool
	cancelSent bool
	cancelReq  bool          // cancelled before the generate was sent
	cancelC    chan struct{} // closed with cancelReq
	grace      *time.Timer
}

func newJob(id string) *job {
	return &job{id: id, out: make(chan protocol.Message), wake: make(chan struct{}, 1),
		endedC: make(chan struct{}), cancelC: make(chan struct{})}
}

func (j *job) push(m protocol.Message, final bool) {
	j.qmu.Lock()
	j.queue = append(j.queue, m)
	j.qdone = j.qdone || final
	j.qmu.Unlock()
	select {
	case j.wake <- struct{}{}:
	default:
	}
}

// forward delivers the queue to the caller and closes the channel after the final
// message. The caller must read the channel to its end (Submit says so).
func (j *job) forward() {
	for {
		j.qmu.Lock()
		if len(j.queue) == 0 {
			done := j.qdone
			j.qmu.Unlock()
			if done {
				close(j.out)
				return
			}
			<-j.wake
			continue
		}
		m := j.queue[0]
		j.queue = j.queue[1:]
		j.qmu.Unlock()
		j.out <- m
	}
}

func errorMessage(id string, e *failure.JobError) protocol.Message {
	return protocol.Error{ID: id, Code: e.Code, Message: e.Message, Detail: e.Detail, Field: e.Field}
}

// endLocked gives j its final message. The caller holds b.mu.
func (b *Bridge) endLocked(j *job, final protocol.Message) {
	if j.ended {
		return
	}
	j.ended = true
	if b.job == j {
		b.job = nil
	}
	if j.grace != nil {
		j.grace.Stop()
	}
	var code failure.ErrorCode
	switch f := final.(type) {
	case protocol.Result:
		f.ID = j.id
		final = f
	case protocol.Error:
		f.ID = j.id
		final, code = f, f.Code
	}
	j.push(final, true)
	close(j.endedC)
	if j.w != nil && b.w == j.w && b.staleLocked(j.w) {
		b.retireLocked(j.w) // the settings changed during the job: a new worker for the next one
	}
	b.log(j.id).Info("job ended", "type", final.Type(), "code", code)
}

// jobOnLocked returns the unfinished job that runs on w, or nil.
func (b *Bridge) jobOnLocked(w *worker) *job {
	if j := b.job; j != nil && j.w == w && !j.ended {
		return j
	}
	return nil
}

func (b *Bridge) noteFailureLocked() {
	b.failures++
	b.notBefore = time.Now().Add(backoffDelay(b.failures, b.cfg.BackoffMin, b.cfg.BackoffMax, rand.Int64N))
}

func closedError() *failure.JobError {
	return &failure.JobError{Code: failure.ErrCancelled, Message: "Atelier is closing, so the job was not run."}
}

// Submit runs req as job id on the worker, starting the worker first if none runs.
// The channel yields accepted, progress, preview and finally one result or error
// (code worker_crashed when the worker died or stopped responding, internal when it sent an unreadable
// line), then closes; the caller must drain it. Cancelling ctx cancels the job.
// An error means the job never started; it is a *failure.JobError: an invalid request
// or id, another job still running, a worker that failed to start, or ctx done.
func (b *Bridge) Submit(ctx context.Context, id string, req request.Request) (<-chan protocol.Message, error) {
	if !protocol.ValidID(id) {
		return nil, &failure.JobError{Code: failure.ErrInvalidRequest, Field: "id",
			Message: fmt.Sprintf("The job id %q is not valid: it must be 1-%d letters, digits, _ . or -. This is a bug in Atelier; please report it.", id, protocol.MaxIDLen)}
	}
	if err := req.ValidateWire(); err != nil {
		je := &failure.JobError{Op: "check the request", Err: err, Code: failure.ErrInvalidRequest, Message: fmt.Sprintf("The request cannot be run (%v). Fix the field and submit it again.", err)}
		if v, ok := request.AsValidation(err); ok && len(v.Fields) > 0 {
			je.Field = v.Fields[0].Field
		}
		return nil, je
	}
	j := newJob(id)
	b.mu.Lock()
	switch {
	case b.closed:
		b.mu.Unlock()
		return nil, closedError()
	case b.job != nil:
		running := b.job.id
		b.mu.Unlock()
		return nil, &failure.JobError{Code: failure.ErrUnsupported,
			Message: fmt.Sprintf("The worker runs one job at a time and job %s is still running. Wait for it to end, or cancel it.", running)}
	}
	b.job = j
	b.mu.Unlock()
	release := func() {
		b.mu.Lock()
		if b.job == j {
			b.job = nil
		}
		b.mu.Unlock()
	}

	// The worker may die between its start and our attaching the job; then start
	// another (a crash loop ends in the backoff and a start error).
	var w *worker
	for attempt := 1; ; attempt++ {
		var err error
		w, err = b.ensure(ctx, j.cancelC, id)
		if err != nil {
			release()
			return nil, err
		}
		b.mu.Lock()
		if j.cancelReq {
			b.mu.Unlock()
			release()
			return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "The job was cancelled before it started."}
		}
		if b.w == w && b.staleLocked(w) {
			// The settings changed while it started: this job gets a worker of the new ones.
			b.retireLocked(w)
			b.mu.Unlock()
			attempt--
			continue
		}
		if b.w == w && !w.broken && !w.gone {
			j.w = w
			w.jobID = id
			if w.beats {
				go b.watchSilence(j, w)
			}
			b.mu.Unlock()
			break
		}
		b.mu.Unlock()
		if attempt == 3 {
			release()
			return nil, &failure.JobError{Code: failure.ErrWorkerCrashed,
				Message: "The worker stopped right after it started, three times. The detail below shows its last log lines; retry, and report it if it keeps happening.",
				Detail:  strings.Join(b.StderrTail(), "\n")}
		}
	}

	go j.forward()
	go func() {
		select {
		case <-ctx.Done():
			_ = b.Cancel(id)
		case <-j.endedC:
		}
	}()
	b.log(id).Info("job sent", "pid", w.pid(), "model", req.Model, "steps", req.Steps,
		"size", fmt.Sprintf("%dx%d", req.Width, req.Height), "batch", req.BatchSize)
	if err := w.send(protocol.Generate{ID: id, Request: &req}); err != nil {
		// The worker is gone or stuck. Its exit ends the job as worker_crashed.
		b.log(id).Warn("could not send the job to the worker; stopping it", "pid", w.pid(), "err", err)
		w.kill()
	}
	return j.out, nil
}

// Cancel asks the worker to stop job id at its next denoising step; the job then ends
// with an error of code cancelled. A worker that does not end it within CancelGrace
// is killed and the job ends as cancelled all the same. It returns ErrNoSuchJob
// (wrapped) when id is not running.
func (b *Bridge) Cancel(id string) error {
	b.mu.Lock()
	j := b.job
	if j == nil || j.id != id || j.ended {
		b.mu.Unlock()
		return fmt.Errorf("cancel job %q: %w", id, ErrNoSuchJob)
	}
	if j.w == nil {
		if !j.cancelReq {
			j.cancelReq = true
			close(j.cancelC)
		}
		b.mu.Unlock()
		return nil
	}
	if j.cancelSent {
		b.mu.Unlock()
		return nil
	}
	j.cancelSent = true
	w := j.w
	j.grace = time.AfterFunc(b.cfg.CancelGrace, func() { b.cancelTimedOut(j, w) })
	b.mu.Unlock()

	b.log(id).Info("cancelling job", "pid", w.pid())
	if err := w.send(protocol.Cancel{ID: id}); err != nil {
		// A worker that cannot be written to is dead or stuck; the grace timer or its
		// exit ends the job.
		b.log(id).Warn("could not send cancel to the worker", "pid", w.pid(), "err", err)
	}
	return nil
}

// silenceTicks is how many ticks the heartbeat deadline is counted in.
const silenceTicks = 10

// watchSilence kills j's worker and ends j as worker_crashed once the worker has said
// nothing for HeartbeatTimeout. A worker that announced heartbeats sends one every few
// seconds from a thread of its own, however long a step takes, so silence means it is
// frozen: stopped, deadlocked, or swapped out. The silence is counted in ticks of the
// bridge's own clock, so that time the bridge itself was stopped (Ctrl-Z of the CLI,
// while its worker runs on in its own process group) is not charged to the worker.
// It is between HeartbeatTimeout and a tenth more.
func (b *Bridge) watchSilence(j *job, w *worker) {
	t := time.NewTicker(b.cfg.HeartbeatTimeout / silenceTicks)
	defer t.Stop()
	last, quiet := w.heard.Load(), 0
	for {
		select {
		case <-j.endedC:
			return
		case <-w.done: // its exit ends the job
			return
		case <-t.C:
		}
		if n := w.heard.Load(); n != last {
			last, quiet = n, 0
			continue
		}
		if quiet++; quiet > silenceTicks {
			b.silenced(j, w, last)
			return
		}
	}
}

// silenced ends job j, whose worker w has read no line since heard, and kills w. SIGKILL
// ends a stopped process too. The job ends first, so that it ends even if the process
// does not die at once (a process in uninterruptible sleep dies only when it wakes).
func (b *Bridge) silenced(j *job, w *worker, heard int64) {
	b.mu.Lock()
	if j.ended || w.broken || w.gone || w.heard.Load() != heard {
		b.mu.Unlock()
		return
	}
	w.broken = true
	if b.w == w {
		b.w = nil
	}
	b.noteFailureLocked()
	timeout := b.cfg.HeartbeatTimeout
	tail := w.tail.snapshot()
	detail := strings.Join(tail, "\n")
	if len(tail) == 0 {
		detail = "(the worker wrote nothing to stderr)"
	}
	b.endLocked(j, errorMessage(j.id, &failure.JobError{Code: failure.ErrWorkerCrashed,
		Message: fmt.Sprintf("The worker stopped responding: Atelier heard nothing from it for %s during the job (no progress and no heartbeat), so it stopped the worker. "+
			"The worker may have been paused (kill -STOP, a debugger), or the machine may be out of memory and swapping. "+
			"Retry: the next job starts a new worker. If it keeps happening, the detail below shows its last log lines.", timeout),
		Detail: detail}))
	b.mu.Unlock()
	b.log(j.id).Error("worker stopped responding; killing it", "pid", w.pid(), "silent_for", timeout)
	w.kill()
}

func (b *Bridge) cancelTimedOut(j *job, w *worker) {
	b.mu.Lock()
	if j.ended {
		b.mu.Unlock()
		return
	}
	w.broken = true
	if b.w == w {
		b.w = nil
	}
	b.endLocked(j, errorMessage(j.id, &failure.JobError{Code: failure.ErrCancelled,
		Message: fmt.Sprintf("The job was cancelled. The worker did not stop within %s, so Atelier stopped it; the next job starts a new worker.", b.cfg.CancelGrace)}))
	b.mu.Unlock()
	b.log(j.id).Warn("worker ignored cancel; killing it", "pid", w.pid(), "grace", b.cfg.CancelGrace)
	w.kill()
}

// Start starts the worker now, if none runs, and waits for its handshake: the UI can
// warm it up while the user writes a prompt. An error is a *failure.JobError.
func (b *Bridge) Start(ctx context.Context) error {
	_, err := b.ensure(ctx, nil, "")
	return err
}

// Ping checks that the worker answers, starting it if none runs; it works mid-job.
func (b *Bridge) Ping(ctx context.Context) error {
	w, err := b.ensure(ctx, nil, "")
	if err != nil {
		return err
	}
	id := fmt.Sprintf("ping-%d", b.pingSeq.Add(1))
	ch := make(chan struct{})
	b.mu.Lock()
	b.pings[id] = ch
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.pings, id)
		b.mu.Unlock()
	}()
	if err := w.send(protocol.Ping{ID: id}); err != nil {
		return fmt.Errorf("ping the worker: %w", err)
	}
	select {
	case <-ch:
		return nil
	case <-w.exited:
		return &failure.JobError{Code: failure.ErrWorkerCrashed, Message: "The worker stopped before it answered a ping; the next job starts a new one.",
			Detail: strings.Join(w.tail.snapshot(), "\n")}
	case <-ctx.Done():
		return fmt.Errorf("ping the worker: no answer: %w", ctx.Err())
	}
}

// Unload asks a running worker to drop its cached models and free device memory,
// after the job in flight. Without a running worker there is nothing to free.
func (b *Bridge) Unload() error {
	b.mu.Lock()
	w := b.w
	b.mu.Unlock()
	if w == nil {
		return nil
	}
	return w.send(protocol.Unload{})
}

// Hello returns the handshake of the latest worker that started: its protocol,
// devices, capabilities and versions. ok is false until one has started.
func (b *Bridge) Hello() (hello protocol.Hello, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.hello, b.helloOK
}

// WorkerPID returns the process id of the worker that runs the job in flight,
// else of the worker ready for jobs, or 0 when there is none: the runner
// records it with each job, so that the history says which worker ran it.
func (b *Bridge) WorkerPID() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.job != nil && b.job.w != nil {
		return b.job.w.pid()
	}
	if b.w != nil {
		return b.w.pid()
	}
	return 0
}

// Capabilities returns what the latest worker said it can do (schedulers,
// ControlNet types, features), or nil before a worker has started. Each
// restart refreshes it.
func (b *Bridge) Capabilities() *protocol.Capabilities {
	h, ok := b.Hello()
	if !ok {
		return nil
	}
	return h.Capabilities
}

// StderrTail returns the last lines (up to 50) that the latest worker wrote to stderr.
func (b *Bridge) StderrTail() []string {
	b.mu.Lock()
	t := b.tail
	b.mu.Unlock()
	return t.snapshot()
}

// Close ends the job in flight (as cancelled), closes the worker's stdin so that it
// exits, kills it if it has not within ExitGrace, and waits until no worker process
// remains. Later Submits fail. It is safe to call more than once.
func (b *Bridge) Close() error {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.closing)
		if j := b.job; j != nil {
			if j.w == nil && !j.cancelReq {
				j.cancelReq = true
				close(j.cancelC)
			} else {
				b.endLocked(j, errorMessage(j.id, &failure.JobError{Code: failure.ErrCancelled,
					Message: "Atelier closed while the job ran; run it again after the next start."}))
			}
		}
	}
	st := b.starting
	ws := make([]*worker, 0, len(b.workers))
	for w := range b.workers {
		w.broken = true
		ws = append(ws, w)
		b.log(w.jobID).Info("stopping worker", "pid", w.pid())
	}
	b.w = nil
	b.mu.Unlock()

	for _, w := range ws {
		w.stop()
	}
	if st != nil {
		<-st.done
	}
	for _, w := range ws {
		<-w.exited
	}
	return nil
}

type startAttempt struct {
	done chan struct{}
	w    *worker
	err  error
}

// ensure returns the ready worker, starting one if none runs. The start goes on
// without the caller when ctx ends or cancel closes, so that the next job finds the
// worker warm instead of paying for the Python imports again.
func (b *Bridge) ensure(ctx context.Context, cancel <-chan struct{}, id string) (*worker, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, closedError()
	}
	if b.w != nil && b.staleLocked(b.w) && b.jobOnLocked(b.w) == nil {
		b.retireLocked(b.w) // started before the settings changed
	}
	if b.w != nil {
		w := b.w
		b.mu.Unlock()
		select {
		case <-w.done:
			// It has exited but its exit is not handled yet (the readers are still
			// draining): wait for that, which clears b.w, rather than send it a job.
			<-w.exited
			return b.ensure(ctx, cancel, id)
		default:
		}
		return w, nil
	}
	st := b.starting
	if st == nil {
		st = &startAttempt{done: make(chan struct{})}
		b.starting = st
		go b.start(st, id)
	}
	b.mu.Unlock()
	select {
	case <-st.done:
		return st.w, st.err
	case <-ctx.Done():
		return nil, &failure.JobError{Op: "start the worker", Err: ctx.Err(), Code: failure.ErrCancelled,
			Message: "The job was cancelled while the worker was starting.", Detail: ctx.Err().Error()}
	case <-cancel:
		return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "The job was cancelled before it started."}
	}
}

func (b *Bridge) start(st *startAttempt, id string) {
	defer close(st.done)
	b.mu.Lock()
	cfg, gen := b.startConfigLocked()
	b.mu.Unlock()
	argv, workerDir, err := cfg.WorkerCommand()
	notSetUp := err != nil
	var w *worker
	var hello protocol.Hello
	if !notSetUp {
		w, hello, err = b.startWorker(id, argv, cfg.workerEnv(workerDir), gen)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.starting = nil
	switch {
	case err != nil:
		st.err = err
		// A worker that is not set up is no crash loop: say so at once, every time.
		if !notSetUp {
			b.noteFailureLocked()
		}
	case b.closed:
		st.err = closedError()
		w.broken = true
		go w.stop()
	case w.gone || w.broken:
		st.err = &failure.JobError{Code: failure.ErrWorkerCrashed, Message: "The worker stopped right after it started. The detail below shows its last log lines; retry, and report it if it keeps happening.",
			Detail: strings.Join(w.tail.snapshot(), "\n")}
		b.noteFailureLocked()
	default:
		w.ready = true
		w.beats = hello.Capabilities.Has(protocol.FeatureHeartbeat)
		b.w = w
		b.hello, b.helloOK = hello, true
		st.w = w
	}
}

// startWorker waits out the backoff, spawns a worker and waits for its hello.
func (b *Bridge) startWorker(id string, argv, env []string, gen int) (*worker, protocol.Hello, error) {
	lg := b.log(id)
	b.mu.Lock()
	wait := time.Until(b.notBefore)
	b.mu.Unlock()
	if wait > 0 {
		lg.Info("waiting before restarting the worker", "wait", wait.Round(time.Millisecond))
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-b.closing:
			t.Stop()
			return nil, protocol.Hello{}, closedError()
		}
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, protocol.Hello{}, closedError()
	}
	w, err := b.spawn(argv, env, id)
	if w != nil {
		w.gen = gen
	}
	if err != nil {
		b.mu.Unlock()
		return nil, protocol.Hello{}, &failure.JobError{Op: "start the worker", Err: err, Code: failure.ErrInternal,
			Message: fmt.Sprintf("Atelier could not start the worker (%s). Check that %s names a working python, or run `atelier setup` (`make venv` in a clone).", argv[0], EnvPython),
			Detail:  err.Error()}
	}
	b.workers[w] = struct{}{}
	b.tail = w.tail
	b.mu.Unlock()
	lg.Info("worker started", "pid", w.pid(), "cmd", strings.Join(argv, " "))
	b.tellStarting("launching Python")

	hello, herr := b.handshake(w, lg)
	close(w.hsDone)
	if herr != nil {
		b.mu.Lock()
		w.broken = true
		b.mu.Unlock()
		if herr.Code == failure.ErrUnsupported {
			w.stop() // it is healthy, only of another version: let it exit cleanly
		} else {
			w.kill()
		}
		<-w.exited
		tail := strings.Join(w.tail.snapshot(), "\n")
		if herr.Detail == "" {
			herr.Detail = tail
		} else if tail != "" {
			herr.Detail += "\n\nworker stderr:\n" + tail
		}
		lg.Warn("worker failed to start", "pid", w.pid(), "code", herr.Code, "err", herr.Message)
		return nil, protocol.Hello{}, herr
	}
	lg.Info("worker ready", "pid", w.pid(), "protocol", hello.Protocol, "worker_version", hello.WorkerVersion,
		"device", hello.Device, "dtype", hello.Dtype)
	return w, hello, nil
}

// handshake waits for hello under the stall deadline, which every loading line moves.
func (b *Bridge) handshake(w *worker, lg *slog.Logger) (protocol.Hello, *failure.JobError) {
	stall := b.cfg.StallTimeout
	timer := time.NewTimer(stall)
	defer timer.Stop()
	for {
		select {
		case ev := <-w.events:
			m, isHello := ev.(protocol.Hello)
			if !isHello {
				msg := ev.(protocol.Loading).Message
				lg.Info("worker loading", "pid", w.pid(), "message", msg)
				b.tellStarting(msg)
				timer.Reset(stall)
				continue
			}
			if m.Protocol != protocol.ProtocolVersion {
				return protocol.Hello{}, versionError(m.Protocol, m.WorkerVersion)
			}
			return m, nil
		case <-timer.C:
			return protocol.Hello{}, &failure.JobError{Code: failure.ErrInternal,
				Message: fmt.Sprintf("The worker said nothing for %s while starting, so Atelier stopped it. The detail below shows its last log lines; retry, and if it hangs again, look there for what it was doing.", stall)}
		case <-w.exited:
			b.mu.Lock()
			f := w.failure
			b.mu.Unlock()
			if f != nil {
				return protocol.Hello{}, f
			}
			return protocol.Hello{}, &failure.JobError{Code: failure.ErrWorkerCrashed,
				Message: fmt.Sprintf("The worker stopped while starting (%s). The detail below shows its last log lines; if they name a missing module, run `atelier setup --force` (`make venv` in a clone) to repair the Python environment.", exitReason(w))}
		case <-b.closing:
			return protocol.Hello{}, closedError()
		}
	}
}

func versionError(workerProtocol int, workerVersion string) *failure.JobError {
	return &failure.JobError{Code: failure.ErrUnsupported,
		Message: fmt.Sprintf("The worker speaks protocol version %d, but this Atelier speaks version %d. They come from different versions of Atelier: update both from the same checkout and rebuild with `make run`.", workerProtocol, protocol.ProtocolVersion),
		Detail:  fmt.Sprintf("worker_version %q", workerVersion)}
}

// handleLine routes one line from the worker's stdout.
func (b *Bridge) handleLine(w *worker, line []byte) {
	m, err := protocol.Decode(line)
	if err != nil {
		b.unreadable(w, line, err)
		return
	}
	b.mu.Lock()
	if w.broken {
		b.mu.Unlock()
		return
	}
	if !w.ready {
		if e, ok := m.(protocol.Error); ok && e.ID == "" {
			// Why it cannot start (the device asked for is not there): the reason the
			// handshake gives once the worker exits, rather than a crash.
			w.failure = &failure.JobError{Code: e.Code, Message: e.Message, Detail: e.Detail, Field: e.Field}
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		switch m.(type) {
		case protocol.Loading, protocol.Hello:
		default:
			b.unreadable(w, line, fmt.Errorf("a %q message came before hello", m.Type()))
			return
		}
		select {
		case w.events <- m:
		case <-w.hsDone:
		}
		return
	}
	if violation := b.routeLocked(w, m); violation != nil {
		b.mu.Unlock()
		b.unreadable(w, line, violation)
		return
	}
	b.mu.Unlock()
}

// routeLocked hands a message of a ready worker to its job or ping; it returns an
// error for a message the worker must never send. The caller holds b.mu.
func (b *Bridge) routeLocked(w *worker, m protocol.Message) error {
	j := b.jobOnLocked(w)
	switch msg := m.(type) {
	case protocol.Accepted, protocol.Progress, protocol.Preview:
		id := protocol.IDOf(m)
		if j == nil || id != j.id {
			b.log(id).Warn("dropping a message for a job that is not running", "type", m.Type(), "pid", w.pid())
			return nil
		}
		if _, ok := m.(protocol.Accepted); ok {
			j.accepted = true
		}
		j.push(m, false)
	case protocol.Result, protocol.Error:
		id := protocol.IDOf(m)
		var code failure.ErrorCode
		var text string
		if e, ok := msg.(protocol.Error); ok {
			// An error without an id is about a line the worker could not read;
			// before accepted, that line can only be this job's generate.
			if e.ID == "" && j != nil && !j.accepted {
				e.ID = j.id
				id, m = e.ID, e
			}
			code, text = e.Code, e.Message
		}
		if j == nil || id != j.id {
			b.log(id).Warn("dropping a final message for a job that is not running", "type", m.Type(), "code", code, "message", text, "pid", w.pid())
			return nil
		}
		// The worker did its part, so it is healthy: the next failure backs off from the start.
		b.failures, b.notBefore = 0, time.Time{}
		b.endLocked(j, m)
	case protocol.Pong:
		if ch, ok := b.pings[msg.ID]; ok {
			close(ch)
			delete(b.pings, msg.ID)
		}
	case protocol.Heartbeat:
		// Its line moved w.heard, which is all the silence watch needs.
	case protocol.Loading, protocol.Hello:
		b.log(w.jobID).Debug("ignoring a late start-up message", "type", m.Type(), "pid", w.pid())
	default:
		return fmt.Errorf("the worker sent %q, which only Atelier sends", m.Type())
	}
	return nil
}

// unreadable stops a worker that broke the protocol: whatever it says next cannot be
// trusted. The job in flight ends with code internal.
func (b *Bridge) unreadable(w *worker, line []byte, cause error) {
	b.mu.Lock()
	if w.broken {
		b.mu.Unlock()
		return
	}
	w.broken = true
	var je *failure.JobError
	if !w.ready {
		// A worker of another protocol version may not even write our hello; say
		// that rather than "unreadable".
		var peek struct {
			Type     string `json:"type"`
			Protocol int    `json:"protocol"`
		}
		if json.Unmarshal(line, &peek) == nil && peek.Type == protocol.MsgHello && peek.Protocol != protocol.ProtocolVersion {
			je = versionError(peek.Protocol, "")
		}
	}
	if je == nil {
		je = &failure.JobError{Op: "read the worker's line", Err: cause, Code: failure.ErrInternal,
			Message: "The worker sent an unreadable line, so Atelier stopped it; the next job starts a new worker. If this keeps happening, report it with the detail below.",
			Detail:  fmt.Sprintf("%v\nline: %s", cause, quoteCut(line, 500))}
	}
	w.failure = je
	b.noteFailureLocked()
	if b.w == w {
		b.w = nil
	}
	id := w.jobID
	j := b.jobOnLocked(w)
	b.mu.Unlock()
	b.log(id).Error("worker broke the protocol; killing it", "pid", w.pid(), "err", cause, "line", quoteCut(line, 200))
	w.kill()
	if j == nil {
		return
	}
	// Its last stderr lines explain the bad line: read them to the end (a killed
	// process closes stderr at once; the wait is bounded all the same).
	t := time.NewTimer(drainGrace)
	select {
	case <-w.stderrDone:
	case <-t.C:
	}
	t.Stop()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.jobOnLocked(w) == j {
		final := *je
		final.Detail += "\n\nworker stderr:\n" + strings.Join(w.tail.snapshot(), "\n")
		b.endLocked(j, errorMessage(j.id, &final))
	}
}

func quoteCut(line []byte, n int) string {
	if len(line) > n {
		return fmt.Sprintf("%q…", line[:n])
	}
	return fmt.Sprintf("%q", line)
}

// workerExited handles a process's end, once its output is read.
func (b *Bridge) workerExited(w *worker) {
	b.mu.Lock()
	defer b.mu.Unlock()
	w.gone = true
	delete(b.workers, w)
	if b.w == w {
		b.w = nil
	}
	reason := exitReason(w)
	lg := b.log(w.jobID)
	if j := b.jobOnLocked(w); j != nil {
		// Nobody asked it to stop: a crash, reported with its last words.
		b.noteFailureLocked()
		tail := w.tail.snapshot()
		detail := strings.Join(tail, "\n")
		if len(tail) == 0 {
			detail = "(the worker wrote nothing to stderr)"
		}
		b.endLocked(j, errorMessage(j.id, &failure.JobError{Code: failure.ErrWorkerCrashed,
			Message: fmt.Sprintf("The worker process stopped during the job (%s). Retry: the next job starts a new worker. If it keeps stopping, the detail below shows its last log lines.%s", reason, killedHint(w)),
			Detail:  detail}))
		lg.Error("worker crashed during a job", "pid", w.pid(), "exit", reason)
		return
	}
	if w.ready && !w.broken && !b.closed {
		b.noteFailureLocked()
		lg.Warn("worker exited while idle; the next job starts a new one", "pid", w.pid(), "exit", reason)
		return
	}
	lg.Info("worker exited", "pid", w.pid(), "exit", reason)
}

// tellStarting tells Config.OnStarting, if set, what the starting worker does.
func (b *Bridge) tellStarting(message string) {
	if b.cfg.OnStarting != nil {
		b.cfg.OnStarting(message)
	}
}

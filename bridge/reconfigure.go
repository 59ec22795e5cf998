package bridge

import "slices"

// workerSettings are the parts of the worker's start that Reconfigure changes:
// the user's settings, which can change while the app runs. Guarded by Bridge.mu.
type workerSettings struct {
	gen    int      // how many times Reconfigure changed them
	python string   // replaces Config.Python when not empty
	env    []string // added to the worker's environment before Config.Env
}

// Reconfigure sets the Python and the environment variables (VAR=VALUE) that
// the next worker starts with, on top of Config: python, when not empty,
// replaces Config.Python; env comes before Config.Env, so that Config.Env
// still wins. When they differ from the running worker's, that worker is
// replaced: at once when it is idle, after the job in flight otherwise, never
// in the middle of a job; the next job (or Start) starts the new one. It
// reports whether anything changed and whether the restart waits for a job.
func (b *Bridge) Reconfigure(python string, env []string) (changed, afterJob bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if python == b.settings.python && slices.Equal(env, b.settings.env) {
		return false, false
	}
	b.settings = workerSettings{gen: b.settings.gen + 1, python: python, env: slices.Clone(env)}
	w := b.w
	if w == nil {
		return true, false
	}
	if b.jobOnLocked(w) != nil {
		b.log(w.jobID).Info("settings changed; the worker restarts after its job", "pid", w.pid())
		return true, true
	}
	b.log(w.jobID).Info("settings changed; restarting the idle worker", "pid", w.pid())
	b.retireLocked(w)
	return true, false
}

// WorkersStarted returns how many worker processes this bridge has started, so that
// a caller can wait for the next one.
func (b *Bridge) WorkersStarted() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seq
}

// Generation returns how many times Reconfigure has changed the settings, and
// the generation of the worker ready for jobs (-1 when none is): equal means
// the worker runs with the latest settings.
func (b *Bridge) Generation() (settings, worker int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	worker = -1
	if b.w != nil {
		worker = b.w.gen
	}
	return b.settings.gen, worker
}

// startConfigLocked is the Config the next worker starts with, and its generation.
func (b *Bridge) startConfigLocked() (Config, int) {
	c := b.cfg
	if b.settings.python != "" {
		c.Python = b.settings.python
	}
	c.Env = slices.Concat(b.settings.env, c.Env)
	return c, b.settings.gen
}

// staleLocked: w was started with settings that Reconfigure has changed since.
func (b *Bridge) staleLocked(w *worker) bool { return w.gen != b.settings.gen }

// retireLocked stops w on purpose, gently (stdin closed, killed after
// ExitGrace): its exit is no failure, and no job runs on it.
func (b *Bridge) retireLocked(w *worker) {
	w.broken = true
	if b.w == w {
		b.w = nil
	}
	go w.stop()
}

// Package bridge supervises the Python worker (python -m atelier_worker): it starts it,
// checks its handshake, streams jobs over the JSON-lines protocol of docs/protocol.md,
// cancels them, and restarts the worker after a crash. It imports core, never Fyne.
package bridge

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"atelier/core/failure"
	"atelier/core/spec"
)

// DefaultPython and DefaultWorkerDir are set at build time by the Makefile
// (-ldflags -X) to the venv's python and the repository's python folder, so that
// `make run` works with no set-up. The environment variables EnvPython and
// EnvWorkerDir override them.
var (
	DefaultPython    string
	DefaultWorkerDir string
)

// Environment variables that choose the worker at run time.
const (
	EnvPython    = "ATELIER_PYTHON"
	EnvWorkerDir = "ATELIER_WORKER_DIR"
)

// Defaults of Config's durations.
const (
	DefaultStallTimeout = 60 * time.Second
	DefaultCancelGrace  = 30 * time.Second
	DefaultExitGrace    = 5 * time.Second
	DefaultBackoffMin   = 500 * time.Millisecond
	DefaultBackoffMax   = 30 * time.Second
	// DefaultHeartbeatTimeout is the spec's heartbeat deadline (docs/protocol.md).
	DefaultHeartbeatTimeout = spec.HeartbeatDeadlineS * time.Second
)

// Config says how to run the worker. The zero value works in a binary built by the
// Makefile or with ATELIER_PYTHON and ATELIER_WORKER_DIR set.
type Config struct {
	// Python runs the worker; empty means $ATELIER_PYTHON, then DefaultPython.
	Python string
	// WorkerDir holds the atelier_worker package and becomes the worker's PYTHONPATH;
	// empty means $ATELIER_WORKER_DIR, then DefaultWorkerDir.
	WorkerDir string
	// Module is the Python module run with -m; empty means atelier_worker. The Ray proxy
	// (atelier_worker.ray_proxy) speaks the same protocol, so nothing else changes.
	Module string
	// Args are appended to the worker's command line.
	Args []string
	// Env is added to the worker's environment last, so it can override anything.
	Env []string
	// CacheDir becomes ATELIER_CACHE_DIR, where the worker keeps generated models such as
	// the tiny one; empty leaves the worker's own default.
	CacheDir string
	// Command replaces `Python -m atelier_worker` (tests run a fake worker this way).
	Command []string

	// StallTimeout is how long the worker may stay silent while starting; every
	// `loading` line moves the deadline forward. Default 60s.
	StallTimeout time.Duration
	// CancelGrace is how long a cancelled job may take to end before the worker is
	// killed. The worker stops at the next denoising step, so this covers one step
	// (or a model load, which cannot be interrupted). Default 30s.
	CancelGrace time.Duration
	// HeartbeatTimeout is how long a worker that announced heartbeats may say nothing
	// while a job is in flight before it counts as frozen: it is killed and the job
	// ends as worker_crashed. A worker without the heartbeat feature gets no such
	// deadline. Default DefaultHeartbeatTimeout (30s).
	HeartbeatTimeout time.Duration
	// ExitGrace is how long Close waits for the worker to exit after closing its stdin
	// before killing it. Default 5s.
	ExitGrace time.Duration
	// BackoffMin and BackoffMax bound the wait before restarting a worker that failed:
	// it doubles with each failure in a row and resets after a job that ends normally.
	// Defaults 500ms and 30s.
	BackoffMin, BackoffMax time.Duration

	// Logger receives the bridge's logs, each with the request id; nil means slog.Default().
	Logger *slog.Logger

	// OnStarting, if set, is told what a starting worker is doing: once as it is
	// spawned, then each loading line it prints before hello. A job's channel
	// begins only when the worker is ready, so this is how a caller shows the
	// start-up (seconds of Python imports) instead of silence. It is called from
	// the bridge's own goroutine, and must not call the bridge.
	OnStarting func(message string)
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.StallTimeout, DefaultStallTimeout)
	def(&c.CancelGrace, DefaultCancelGrace)
	def(&c.HeartbeatTimeout, DefaultHeartbeatTimeout)
	def(&c.ExitGrace, DefaultExitGrace)
	def(&c.BackoffMin, DefaultBackoffMin)
	def(&c.BackoffMax, DefaultBackoffMax)
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = c.BackoffMin
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// WorkerCommand resolves the command line that starts the worker and the folder that
// becomes its PYTHONPATH (empty with Command). An error is a *failure.JobError that
// tells the user how to set the worker up.
func (c Config) WorkerCommand() (argv []string, workerDir string, err error) {
	if len(c.Command) > 0 {
		return append(append([]string{}, c.Command...), c.Args...), c.WorkerDir, nil
	}
	python := firstNonEmpty(c.Python, os.Getenv(EnvPython), DefaultPython)
	dir := firstNonEmpty(c.WorkerDir, os.Getenv(EnvWorkerDir), DefaultWorkerDir)
	if python == "" || dir == "" {
		return nil, "", &failure.JobError{Code: failure.ErrInternal,
			Message: "Atelier does not know which Python runs its worker. Build and start it with `make run` " +
				"(or run `make venv`, then set " + EnvPython + " to the venv's python and " + EnvWorkerDir +
				" to the repository's python folder).",
			Detail: fmt.Sprintf("%s=%q %s=%q", EnvPython, python, EnvWorkerDir, dir)}
	}
	if _, err := os.Stat(python); err != nil {
		return nil, "", &failure.JobError{Op: "find the worker's python", Err: err, Code: failure.ErrInternal,
			Message: fmt.Sprintf("The worker's Python %s cannot be used. Run `atelier setup` to create it (`make venv` in a clone), or set %s to a python that has the worker's requirements.", python, EnvPython),
			Detail:  err.Error()}
	}
	if _, err := os.Stat(filepath.Join(dir, "atelier_worker")); err != nil {
		return nil, "", &failure.JobError{Op: "find the worker's code", Err: err, Code: failure.ErrInternal,
			Message: fmt.Sprintf("The worker's code is not in %s. Set %s to the python folder of the Atelier repository, or rebuild with `make run`.", dir, EnvWorkerDir),
			Detail:  err.Error()}
	}
	argv = append([]string{python, "-m", firstNonEmpty(c.Module, "atelier_worker")}, c.Args...)
	return argv, dir, nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// workerEnv is the worker's environment: ours, then what the protocol needs, then Env.
func (c Config) workerEnv(workerDir string) []string {
	// Python caches the bytecode of what it imports unless told not to. A
	// machine that says so (PYTHONDONTWRITEBYTECODE, set by some container
	// images) has torch, transformers and diffusers compiled from source at every
	// worker start: 10 s more of each start on an H200 machine
	// (docs/BENCHMARKS.md). Where the folders cannot be written, Python skips
	// the cache by itself; Env may still set the variable.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "PYTHONDONTWRITEBYTECODE=")
	})
	if workerDir != "" {
		env = append(env, "PYTHONPATH="+workerDir)
	}
	// Unbuffered, so that a line is on the pipe as soon as it is printed, and a crash
	// does not swallow the last stderr lines that explain it.
	env = append(env, "PYTHONUNBUFFERED=1",
		// Models come from the user's disk; a job must never stall on a download.
		"HF_HUB_OFFLINE=1",
		// The parent the worker must outlive by nothing: if this process dies before the
		// worker starts watching it, the worker sees another parent and exits.
		fmt.Sprintf("ATELIER_PARENT_PID=%d", os.Getpid()))
	if c.CacheDir != "" {
		env = append(env, "ATELIER_CACHE_DIR="+c.CacheDir)
	}
	// exec.Cmd keeps the last value of a duplicated key, so these win.
	return append(env, c.Env...)
}

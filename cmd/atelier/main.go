// Command atelier is the Atelier studio: the desktop app by default, and
// headless subcommands (generate, history, doctor, version) for scripts.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"atelier/bridge"
	"atelier/core/jobs"
	"atelier/core/paths"
	"atelier/core/settings"
	"atelier/core/store"
)

// Exit statuses shared by every subcommand.
const (
	exitOK        = 0
	exitFailure   = 1   // the job or the check failed
	exitUsage     = 2   // the input was wrong: nothing was recorded or written
	exitCancelled = 130 // stopped by SIGINT/SIGTERM, as shells report a Ctrl-C
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0"

// logLevelEnv chooses how much the bridge logs to stderr (debug, info, warn,
// error); warnings only by default, so that logs do not break the progress bar.
const logLevelEnv = "ATELIER_LOG_LEVEL"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `Atelier: Stable Diffusion XL on your own machine.

Usage:
  atelier                 open the studio window
  atelier generate ...    generate images without a window
  atelier history ...     list past jobs; import a PNG's settings; verify that a job reproduces
  atelier queue ...       add, list and run queued jobs (survive crashes)
  atelier models ...      list the model library; add-folder DIR, remove-folder DIR
  atelier setup           build the worker's Python environment (first start, upgrades)
  atelier doctor          check that the Python worker can start
  atelier bench ...       time the worker against plain diffusers on this GPU
  atelier version         print the version

Run "atelier <command> --help" for a command's options.
Environment: ATELIER_HOME puts all data under one folder; ATELIER_PYTHON and
ATELIER_WORKER_DIR choose the worker; ATELIER_PIP_INDEX (a package index) and
ATELIER_FIND_LINKS (a folder of wheels) are where set-up installs from;
ATELIER_LOG_LEVEL sets the log level.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		return runGUI(stderr)
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "generate":
		return cmdGenerate(rest, stdout, stderr)
	case "history":
		return cmdHistory(rest, stdout, stderr)
	case "models":
		return cmdModels(rest, stdout, stderr)
	case "queue":
		return cmdQueue(rest, stdout, stderr)
	case "setup":
		return cmdSetup(rest, stdout, stderr)
	case "doctor":
		return cmdDoctor(rest, stdout, stderr)
	case "bench":
		return cmdBench(rest, stdout, stderr)
	case "version", "--version":
		return cmdVersion(rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "atelier: unknown command %q\n\n%s", cmd, usage)
		return exitUsage
	}
}

// app is what every job-running command wires together.
type app struct {
	paths  paths.Paths
	store  *store.Store
	bridge *bridge.Bridge
	runner *jobs.Runner
	// starting passes the bridge's start-up messages to the job's progress.
	starting *startSink
	// worker says where the worker comes from, and whether set-up is due.
	worker workerPlan
	// settings are the stored ones (the Settings window's).
	settings settings.Settings
}

// startSink passes the bridge's start-up messages to whoever shows them now
// (the bridge calls it from its own goroutine).
type startSink struct {
	mu sync.Mutex
	f  func(message string)
}

func (s *startSink) set(f func(message string)) {
	s.mu.Lock()
	s.f = f
	s.mu.Unlock()
}

func (s *startSink) tell(message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f != nil {
		s.f(message)
	}
}

// openApp opens the history and a bridge; each option may change the bridge's
// configuration first (queue run --ray runs the Ray proxy instead of the worker).
func openApp(stderr io.Writer, options ...func(*bridge.Config)) (*app, error) {
	return openAppWith(stderr, settings.Flags{}, options...)
}

// openAppWith is openApp for a command whose flags choose the device or the
// speed mode: they win over the stored settings, the environment over both.
func openAppWith(stderr io.Writer, flags settings.Flags, options ...func(*bridge.Config)) (*app, error) {
	dirs := paths.DefaultPaths()
	if err := dirs.EnsureDirs(); err != nil {
		return nil, err
	}
	history, err := store.OpenStore(dirs.DB)
	if err != nil {
		return nil, err
	}
	sink := &startSink{}
	cfg, plan, err := bridgeConfig(dirs, stderr)
	if err != nil {
		history.Close()
		return nil, err
	}
	cfg.OnStarting = sink.tell
	for _, o := range options {
		o(&cfg)
	}
	br := bridge.New(cfg)
	a := &app{paths: dirs, store: history, bridge: br, runner: jobs.NewRunner(history, br, dirs), starting: sink, worker: plan}
	w := applySettings(a, flags, stderr)
	// One worker per device for every Atelier process on this history: the
	// device of the settings (or a flag, or ATELIER_DEVICE) names its lease.
	a.runner.ShareDevice(appDevice(context.Background(), w.Device))
	return a, nil
}

func (a *app) close() {
	a.bridge.Close()
	releaseLeases(a.store)
	a.store.Close()
}

func bridgeConfig(dirs paths.Paths, stderr io.Writer) (bridge.Config, workerPlan, error) {
	// The worker's own ATELIER_CACHE_DIR wins, so that tests and scripts can
	// share one generated tiny model between homes.
	cache := os.Getenv("ATELIER_CACHE_DIR")
	if cache == "" {
		cache = dirs.Cache
	}
	cfg := bridge.Config{CacheDir: cache, Logger: newLogger(stderr)}
	plan, err := planWorker(dirs)
	if err != nil {
		return cfg, plan, err
	}
	cfg.WorkerDir = plan.dir
	if plan.managed {
		cfg.Python = plan.state.Python
	}
	return cfg, plan, nil
}

func newLogger(w io.Writer) *slog.Logger {
	level := slog.LevelWarn
	if s := os.Getenv(logLevelEnv); s != "" {
		if err := level.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
			fmt.Fprintf(w, "atelier: %s=%q is not a level (debug, info, warn, error); using warn\n", logLevelEnv, s)
			level = slog.LevelWarn
		}
	}
	if isTerminal(w) {
		w = clearLineWriter{w}
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// clearLineWriter clears the terminal's current line before each write, so a
// log record does not land after a progress bar drawn without a newline; the
// bar is drawn again at the next event.
type clearLineWriter struct{ w io.Writer }

func (c clearLineWriter) Write(b []byte) (int, error) {
	if _, err := io.WriteString(c.w, "\r\033[K"); err != nil {
		return 0, err
	}
	return c.w.Write(b)
}

// parseFlags parses a subcommand's flags, printing its help or the error;
// ok false means the command returns code at once.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (code int, ok bool) {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return exitOK, false
		}
		fmt.Fprintf(stderr, "atelier %s: %v\nRun \"atelier %s --help\" for the options.\n", fs.Name(), err, fs.Name())
		return exitUsage, false
	}
	return exitOK, true
}

// interruptContext is cancelled by the first SIGINT or SIGTERM, so the running
// job ends as cancelled; the default handler is then restored, so a second
// signal quits at once.
func interruptContext() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx, stop
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"atelier/bridge"
	"atelier/core/failure"
	"atelier/core/paths"
	"atelier/core/protocol"
	"atelier/core/settings"
	"atelier/core/store"
)

// doctorVersions are the libraries doctor reports, in this order.
var doctorVersions = []string{"python", "torch", "diffusers", "transformers"}

func cmdDoctor(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: atelier doctor

Checks the set-up: the folders and history, the Python that runs the worker, and
the worker itself (started through the same bridge as a job), then prints its
library versions and devices. Says what to do about each problem.
Exit status: 0 all good, 1 a problem (the worker cannot start, or the history cannot open).
`)
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "atelier doctor: takes no arguments")
		return exitUsage
	}

	problems := 0
	problem := func(what, todo string) {
		problems++
		fmt.Fprintf(stdout, "  PROBLEM: %s\n  what to do: %s\n", what, todo)
	}
	note := func(what string) { fmt.Fprintf(stdout, "  note: %s\n", what) }

	// 1. Folders and history, and the settings stored there.
	var stored settings.Settings
	var history *store.Store // nil when it cannot open
	dirs := paths.DefaultPaths()
	fmt.Fprintf(stdout, "Atelier %s\n\nFolders\n  data:    %s\n  cache:   %s\n  history: %s\n", version, dirs.Data, dirs.Cache, dirs.DB)
	if err := dirs.EnsureDirs(); err != nil {
		problem(err.Error(), "make the folder writable, or set ATELIER_HOME to a writable folder")
	} else if store, err := store.OpenStore(dirs.DB); err != nil {
		problem(err.Error(), "move the file away (Atelier then starts a new history), or set ATELIER_HOME elsewhere")
	} else {
		jobs, err := store.ListJobs(context.Background(), 0)
		if err != nil {
			problem(err.Error(), "move the history file away; Atelier then starts a new one")
		} else {
			fmt.Fprintf(stdout, "  history ok: %d jobs\n", len(jobs))
		}
		if stored, err = settings.Load(context.Background(), store); err != nil {
			problem(err.Error(), "open the studio's Settings window (Ctrl+,) and save")
		}
		history = store
		defer store.Close()
	}

	// 2. The interpreter and the worker's code.
	fmt.Fprintln(stdout, "\nWorker")
	cfg, plan, err := bridgeConfig(dirs, stderr)
	if err != nil {
		problem(err.Error(), "set ATELIER_HOME to a writable folder with free space, or reinstall Atelier")
		return finishDoctor(stdout, problems)
	}
	// The worker starts as the app's would: with the stored settings under
	// the environment's variables.
	w := settings.Resolve(stored, settings.Flags{}, os.LookupEnv)
	cfg.Env = append(append([]string{}, w.Env...), cfg.Env...)
	if w.Python != "" {
		cfg.Python, plan.managed = w.Python, false
	}
	fmt.Fprintf(stdout, "  settings: %s, python from %s\n", w.Describe(), w.PythonFrom)
	if what, todo := reportSetup(stdout, plan); what != "" {
		problem(what, todo)
		return finishDoctor(stdout, problems)
	}
	argv, _, err := cfg.WorkerCommand()
	if err != nil {
		problem(jobErrorText(err), "run `atelier setup` (or `make venv` in a clone), or set ATELIER_PYTHON and ATELIER_WORKER_DIR")
		return finishDoctor(stdout, problems)
	}
	fmt.Fprintf(stdout, "  python:  %s\n  models:  %s (generated models such as tiny)\n", argv[0], cfg.CacheDir)

	// 3. Who holds which device's worker; the probe worker starts only on a
	// free device, or it would load a second copy next to the holder's.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	device := appDevice(ctx, w.Device)
	if history != nil {
		if other := reportLeases(ctx, stdout, history, device); other != nil {
			fmt.Fprintf(stdout, "  the worker was not started: %s, and its worker serves every Atelier process on %s "+
				"(a second one would load a second copy of a model there). Run `atelier doctor` again once it has ended, "+
				"or look at that process's own output\n", heldByOther(*other), device)
			return finishDoctor(stdout, problems)
		}
		defer releaseLeases(history) // after the worker has stopped (deferred below)
	}
	br := bridge.New(cfg)
	defer br.Close()
	fmt.Fprintln(stdout, "  starting the worker (importing torch can take a while)...")
	start := time.Now()
	if err := br.Start(ctx); err != nil {
		problem("the worker did not start: "+jobErrorText(err),
			"if a Python module is missing or broken, run `atelier setup` (or `make venv` in a clone); "+
				"otherwise read the worker's lines above and report them")
		if tail := br.StderrTail(); len(tail) > 0 && !strings.Contains(jobErrorText(err), tail[len(tail)-1]) {
			fmt.Fprintf(stdout, "  the worker's last lines on stderr:\n%s\n", indent(strings.Join(tail, "\n"), "    "))
		}
		return finishDoctor(stdout, problems)
	}
	hello, ok := br.Hello()
	if !ok {
		problem("the worker started but its handshake is missing", "report this: it is a bug in Atelier")
		return finishDoctor(stdout, problems)
	}
	fmt.Fprintf(stdout, "  worker ok: started in %.1fs, protocol %d, worker %s\n",
		time.Since(start).Seconds(), hello.Protocol, hello.WorkerVersion)

	fmt.Fprintln(stdout, "\nVersions")
	for _, name := range doctorVersions {
		v := hello.Versions[name]
		if v == "" {
			v = packageVersion(ctx, argv[0], name)
		}
		fmt.Fprintf(stdout, "  %-13s %s\n", name+":", v)
	}
	var extra []string
	for name := range hello.Versions {
		if !slices.Contains(doctorVersions, name) {
			extra = append(extra, name)
		}
	}
	sort.Strings(extra)
	for _, name := range extra {
		fmt.Fprintf(stdout, "  %-13s %s\n", name+":", hello.Versions[name])
	}
	// Optional: only `queue run --ray` needs it (python/requirements-ray.txt).
	if v := packageVersion(ctx, argv[0], "ray"); strings.HasPrefix(v, "NOT INSTALLED") {
		fmt.Fprintf(stdout, "  %-13s not installed (optional, for queue run --ray: `make venv-ray`)\n", "ray:")
	} else {
		fmt.Fprintf(stdout, "  %-13s %s\n", "ray:", v)
	}

	fmt.Fprintf(stdout, "\nDevices\n  running on: %s (%s)\n", hello.Device, hello.Dtype)
	for _, d := range hello.Devices {
		fmt.Fprintf(stdout, "  - %s (%s, %.1f GiB)\n", d.Name, d.Kind, float64(d.MemoryBytes)/(1<<30))
	}
	if hello.Device == "cpu" {
		note("no GPU in use: the tiny model works, but a real SDXL model takes minutes per image on a CPU; " +
			"on a machine with an NVIDIA GPU, check its driver (nvidia-smi) and that the venv's torch is a CUDA build")
	}
	if c := hello.Capabilities; c != nil {
		fmt.Fprintf(stdout, "  schedulers: %s\n", strings.Join(c.Schedulers, ", "))
		if len(c.Features) > 0 {
			fmt.Fprintf(stdout, "  features:   %s\n", strings.Join(c.Features, ", "))
		}
	}
	return finishDoctor(stdout, problems)
}

// packageVersion asks the interpreter for a distribution's version, for the
// libraries the worker's hello leaves out. It reads the package metadata only,
// so it costs no import of the library.
func packageVersion(ctx context.Context, python, name string) string {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "-c",
		"import importlib.metadata as m, sys; print(m.version(sys.argv[1]))", name).Output()
	if err != nil {
		return "NOT INSTALLED (run `make venv`)"
	}
	return strings.TrimSpace(string(out)) + " (from the interpreter)"
}

// reportLeases prints who holds each device's lease, and takes device's for
// the probe worker when it is free; it returns device's lease when another
// live process holds it.
func reportLeases(ctx context.Context, stdout io.Writer, history *store.Store, device string) *store.Lease {
	leases, err := history.Leases(ctx)
	if err != nil {
		fmt.Fprintf(stdout, "  device leases: cannot be read (%v)\n", err)
	}
	if len(leases) == 0 && err == nil {
		fmt.Fprintln(stdout, "  device leases: none (no Atelier process runs a worker on this history)")
	}
	for _, l := range leases {
		fmt.Fprintf(stdout, "  device lease: %s held by %s since %s\n", l.Device, l.Holder(), l.AcquiredAt.Local().Format("2006-01-02 15:04:05"))
	}
	held, l, err := history.AcquireLease(ctx, device)
	if err != nil {
		fmt.Fprintf(stdout, "  device lease of %s: cannot be taken (%v); starting the worker anyway\n", device, err)
		return nil
	}
	if !held {
		return &l
	}
	fmt.Fprintf(stdout, "  %s is free: this check holds its lease while its worker runs\n", device)
	return nil
}

func finishDoctor(w io.Writer, problems int) int {
	if problems > 0 {
		fmt.Fprintf(w, "\n%d problem(s) found.\n", problems)
		return exitFailure
	}
	fmt.Fprintln(w, "\nAll good.")
	return exitOK
}

// jobErrorText is a *failure.JobError's message with its detail, or err's text.
func jobErrorText(err error) string {
	var jerr *failure.JobError
	if errors.As(err, &jerr) {
		if jerr.Detail != "" {
			return jerr.Message + "\n" + indent(jerr.Detail, "    ")
		}
		return jerr.Message
	}
	return err.Error()
}

func cmdVersion(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		if args[0] == "-h" || args[0] == "--help" || args[0] == "-help" {
			fmt.Fprintln(stdout, "Usage: atelier version\n\nPrints Atelier's version, its commit, and the protocol and schema versions it speaks.")
			return exitOK
		}
		fmt.Fprintln(stderr, "atelier version: takes no arguments")
		return exitUsage
	}
	commit := "unknown commit"
	if info, ok := debug.ReadBuildInfo(); ok {
		var rev, modified string
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					modified = "+dirty"
				}
			}
		}
		if rev != "" {
			commit = "commit " + rev[:min(12, len(rev))] + modified
		}
	}
	fmt.Fprintf(stdout, "atelier %s (%s, %s, %s/%s)\nworker protocol %d, history schema %d\n",
		version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH, protocol.ProtocolVersion, store.SchemaVersion())
	return exitOK
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"atelier/bridge"
	"atelier/core/paths"
	"atelier/core/setup"
	"atelier/python"
)

// workerPlan is where the worker's code and Python come from. A binary built
// in a clone (make build) links the clone's python/ folder and venv; an
// installed one unpacks the code it carries and runs it in the venv that
// set-up builds, so it needs no clone.
type workerPlan struct {
	dir          string // the worker's code: becomes its PYTHONPATH
	requirements string // the pinned requirements for that code
	// managed: no Python was named (ATELIER_PYTHON) or linked in, so the
	// venv of set-up runs the worker; state says whether it is ready.
	managed bool
	state   setup.State
}

func setupLayout(dirs paths.Paths) setup.Layout { return setup.Layout{Data: dirs.Data} }

func planWorker(dirs paths.Paths) (workerPlan, error) {
	var p workerPlan
	p.dir = firstSet(os.Getenv(bridge.EnvWorkerDir), bridge.DefaultWorkerDir)
	if p.dir == "" {
		dir, err := setup.UnpackWorker(setupLayout(dirs), python.Files())
		if err != nil {
			return p, err
		}
		p.dir = dir
	}
	p.requirements = filepath.Join(p.dir, "requirements.txt")
	p.managed = firstSet(os.Getenv(bridge.EnvPython), bridge.DefaultPython) == ""
	if p.managed {
		st, err := setup.Inspect(setupLayout(dirs), p.requirements)
		if err != nil {
			return p, fmt.Errorf("%w (set %s to a folder with the worker's code and requirements.txt, or reinstall Atelier)", err, bridge.EnvWorkerDir)
		}
		p.state = st
	}
	return p, nil
}

// needsSetup: the venv that runs the worker is missing, half-made, or was
// built for the requirements of another release.
func (p workerPlan) needsSetup() bool { return p.managed && !p.state.Ready }

func firstSet(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func cmdSetup(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	pythonFlag := fs.String("python", "", "the Python 3.10–3.12 to build the venv with (default: the first of python3.12, python3.11, python3.10, python3 on PATH)")
	findLinks := fs.String("find-links", os.Getenv(setup.FindLinksEnv), "install from this folder of wheels only, with no network (pip --no-index --find-links; default $"+setup.FindLinksEnv+")")
	index := fs.String("index-url", "", "the package index to install from (default: $"+setup.IndexEnv+", then pip's own)")
	force := fs.Bool("force", false, "build the venv again even if it is ready (to repair a broken one)")
	reqs := fs.String("requirements", "", "install these pinned requirements instead of the worker's own (for custom builds and tests)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: atelier setup [--python PATH] [--find-links DIR] [--index-url URL] [--force]

Builds the Python environment (a venv in Atelier's data folder) that runs the
worker: finds a suitable Python, checks the free disk space, and pip-installs
the worker's pinned requirements (torch among them: about 3 GB to download).
The window does the same on its first start. Run again after an upgrade that
changed the requirements; a finished set-up is not repeated.
Exit status: 0 set up, 1 set-up failed (the message says what to do), 2 bad usage.

Options:
`)
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "atelier setup: takes no arguments besides its options")
		return exitUsage
	}
	dirs := paths.DefaultPaths()
	if err := dirs.EnsureDirs(); err != nil {
		fmt.Fprintln(stderr, "atelier setup:", err)
		return exitFailure
	}
	plan, err := planWorker(dirs)
	if err != nil {
		fmt.Fprintln(stderr, "atelier setup:", err)
		return exitFailure
	}
	opt := setup.Options{Python: *pythonFlag, Requirements: plan.requirements, FindLinks: *findLinks, IndexURL: *index}
	if *reqs != "" {
		opt.Requirements = *reqs
	}
	if !plan.managed {
		fmt.Fprintf(stdout, "note: %s or a linked-in Python is set, so the worker does not run in set-up's venv; building it anyway\n", bridge.EnvPython)
	}
	if st, err := setup.Inspect(setupLayout(dirs), opt.Requirements); err == nil && st.Ready && !*force {
		fmt.Fprintf(stdout, "The worker is set up already: %s (--force builds it again)\n", st.Venv)
		return exitOK
	}
	download, disk := setup.Estimate(opt)
	fmt.Fprintf(stdout, "Setting up the worker's Python environment\n  requirements: %s\n", opt.Requirements)
	if download > 0 {
		fmt.Fprintf(stdout, "  download:     about %s (needs about %s of disk)\n", setup.Size(download), setup.Size(disk))
	} else {
		fmt.Fprintf(stdout, "  from:         %s (no download)\n", opt.FindLinks)
	}
	ctx, stop := interruptContext()
	defer stop()
	bar := newSetupBar(stderr)
	opt.Progress = bar.show
	st, err := setup.Install(ctx, setupLayout(dirs), opt)
	bar.end()
	if err != nil {
		var serr *setup.Error
		if errors.As(err, &serr) {
			fmt.Fprintf(stderr, "atelier setup: %s\n  what to do: %s\n", serr.Message, serr.Todo)
			if serr.Detail != "" {
				fmt.Fprintf(stderr, "  pip's last lines:\n%s\n", indent(serr.Detail, "    "))
			}
		} else {
			fmt.Fprintln(stderr, "atelier setup:", err)
		}
		if ctx.Err() != nil {
			return exitCancelled
		}
		return exitFailure
	}
	fmt.Fprintf(stdout, "Set up: %s\nRun `atelier doctor` to check that the worker starts.\n", st.Venv)
	return exitOK
}

// setupBar draws set-up's progress: a bar redrawn in place on a terminal,
// one line per stage elsewhere.
type setupBar struct {
	w     io.Writer
	tty   bool
	stage string
	drawn bool
}

func newSetupBar(w io.Writer) *setupBar { return &setupBar{w: w, tty: isTerminal(w)} }

func (b *setupBar) show(p setup.Progress) {
	if b.tty {
		filled := int(p.Fraction * barWidth)
		fmt.Fprintf(b.w, "\r\033[K[%s%s] %3.0f%% %s", strings.Repeat("#", filled), strings.Repeat("-", barWidth-filled), p.Fraction*100, p.Message)
		b.drawn = true
		return
	}
	if p.Stage != b.stage || p.Stage == "download" {
		fmt.Fprintf(b.w, "%3.0f%% %s\n", p.Fraction*100, p.Message)
	}
	b.stage = p.Stage
}

func (b *setupBar) end() {
	if b.drawn {
		fmt.Fprintln(b.w)
	}
}

// reportSetup prints set-up's facts for doctor: the Python set-up would use,
// the venv and whether it matches the worker's requirements.
func reportSetup(w io.Writer, plan workerPlan) (problem, todo string) {
	fmt.Fprintf(w, "  code:    %s\n  requirements: %s\n", plan.dir, plan.requirements)
	if !plan.managed {
		fmt.Fprintf(w, "  venv:    not used (%s or a linked-in Python runs the worker)\n", bridge.EnvPython)
		return "", ""
	}
	py, err := setup.FindPython(context.Background(), "")
	if err != nil {
		fmt.Fprintf(w, "  python for set-up: none found\n")
	} else {
		fmt.Fprintf(w, "  python for set-up: %s (Python %s)\n", py.Path, py.Version)
	}
	st := plan.state
	switch {
	case st.Ready:
		fmt.Fprintf(w, "  venv:    %s (ready, requirements up to date)\n", st.Venv)
		return "", ""
	case len(st.Stale) > 0:
		fmt.Fprintf(w, "  venv:    %s (missing: the requirements changed with an upgrade; old venv %s)\n", st.Venv, strings.Join(st.Stale, ", "))
	case st.Partial:
		fmt.Fprintf(w, "  venv:    %s (begun, not finished)\n", st.Venv)
	default:
		fmt.Fprintf(w, "  venv:    %s (not made yet)\n", st.Venv)
	}
	todo = "run `atelier setup` (or open the window, which offers it)"
	if err != nil {
		todo = err.(*setup.Error).Todo + "; then run `atelier setup`"
	}
	return "the worker's Python environment is not set up", todo
}

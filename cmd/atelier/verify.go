package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"atelier/core/failure"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/verify"
)

// historyVerify regenerates a recorded job and compares its pixels with the
// recorded images: exit 0 identical, 1 differs (or the regeneration failed),
// 2 the job cannot be checked.
func historyVerify(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("history verify", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	keep := fs.String("keep", "", "keep the regenerated images in this folder (they are not added to the history)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: atelier history verify JOB_ID [--keep DIR] [--json]

Regenerates a recorded job from the settings the history stores (same seed,
model, size, batch and every other setting) and compares the pixels with the
recorded images. Prints "identical", or how many pixels differ and by how much,
and what differs between the recorded run and this one (device, dtype, torch
and diffusers versions, speed settings). The regenerated images go to a
temporary folder and are not added to the history.
JOB_ID is the ID that "atelier history" lists (JOB in "atelier history search").
Exit status: 0 identical, 1 differs or the regeneration failed, 2 the job
cannot be checked (no such job, an image or model file missing), 130 cancelled.

Options:
`)
		fs.PrintDefaults()
	}
	// The ID may come before the options.
	var idArg string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		idArg, args = args[0], args[1:]
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if idArg == "" && fs.NArg() == 1 {
		idArg = fs.Arg(0)
	} else if fs.NArg() > 0 || idArg == "" {
		fmt.Fprintln(stderr, "atelier history verify: give one job ID (\"atelier history\" lists them)")
		return exitUsage
	}
	jobID, err := strconv.ParseInt(idArg, 10, 64)
	if err != nil || jobID <= 0 {
		fmt.Fprintf(stderr, "atelier history verify: %q is not a job ID: give the number \"atelier history\" lists\n", idArg)
		return exitUsage
	}

	a, err := openApp(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "atelier history verify:", err)
		return exitFailure
	}
	defer a.close()
	ctx, stop := interruptContext()
	defer stop()

	if j, err := a.store.GetJob(ctx, jobID); err == nil {
		fmt.Fprintf(stderr, "Checking job %d (%s): regenerating it from its stored settings…\n", jobID, describeJob(j.Request))
	}
	if held, l, err := a.runner.HoldsDevice(ctx); err == nil && !held {
		fmt.Fprintf(stderr, "note: Atelier process %d holds %s, so its worker runs the check (no second copy of the model; nothing is recorded)\n", l.PID, l.Device)
	}
	prog := newProgress(stderr)
	a.starting.set(func(msg string) { prog.event(protocol.Loading{Message: msg}) })
	rep, err := verify.Job(ctx, a.store, a.runner, jobID, verify.Options{TempRoot: a.paths.Cache, KeepDir: *keep, OnEvent: prog.event})
	a.starting.set(nil)
	prog.finish()
	if err != nil {
		return reportVerifyFailure(ctx, err, stderr)
	}
	if *asJSON {
		if code := printJSON(stdout, stderr, "history verify", rep); code != exitOK {
			return code
		}
	} else {
		printVerifyReport(stdout, rep)
	}
	if rep.Identical {
		return exitOK
	}
	return exitFailure
}

func describeJob(r request.Request) string {
	s := fmt.Sprintf("%s, %d × %d, seed %d, %d steps", request.ModelName(r.Model), r.Width, r.Height, r.Seed, r.Steps)
	if r.BatchSize > 1 {
		s += fmt.Sprintf(", batch of %d", r.BatchSize)
	}
	return s
}

func printVerifyReport(w io.Writer, rep *verify.Report) {
	for i, c := range rep.Images {
		fmt.Fprintf(w, "image %d of %d (id %d, seed %d): %s\n", i+1, len(rep.Images), c.ImageID, c.Seed, c.Summary())
		if c.Kept != "" {
			fmt.Fprintf(w, "  regenerated: %s\n", c.Kept)
		}
	}
	if len(rep.Differences) == 0 {
		fmt.Fprintf(w, "Same device (%s), dtype (%s), versions and speed settings as the recorded run.\n", rep.Now.Device, rep.Now.Dtype)
	} else {
		fmt.Fprintln(w, "What differs between the recorded run and this one:")
		for _, d := range rep.Differences {
			fmt.Fprintf(w, "  %s\n", d)
		}
	}
	if rep.Identical {
		fmt.Fprintln(w, "identical")
	} else {
		fmt.Fprintln(w, "differs")
	}
}

func reportVerifyFailure(ctx context.Context, err error, stderr io.Writer) int {
	if errors.Is(err, verify.ErrBadInput) {
		fmt.Fprintln(stderr, "atelier history verify:", err)
		return exitUsage
	}
	var jerr *failure.JobError
	if errors.As(err, &jerr) {
		if jerr.Code == failure.ErrCancelled && ctx.Err() != nil {
			fmt.Fprintln(stderr, "atelier history verify: cancelled; nothing was recorded")
			return exitCancelled
		}
		fmt.Fprintf(stderr, "atelier history verify: the regeneration failed: %s: %s\n", jerr.Code, jerr.Message)
		if jerr.Detail != "" {
			fmt.Fprintf(stderr, "detail:\n%s\n", indent(jerr.Detail, "  "))
		}
		return exitFailure
	}
	fmt.Fprintln(stderr, "atelier history verify:", err)
	return exitFailure
}

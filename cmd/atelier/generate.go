package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"atelier/core/failure"
	"atelier/core/jobs"
	"atelier/core/media"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/settings"
)

type generateOptions struct {
	req      request.Request
	buildErr error // what is wrong with the request flags, told in flag names
	count    int   // --batch-count: jobs run one after another
	out      string
	json     bool
	worker   settings.Flags // --device and --speed
}

func parseGenerate(args []string, stdout, stderr io.Writer) (*generateOptions, int, bool) {
	o := &generateOptions{}
	fs := flag.NewFlagSet("generate", flag.ContinueOnError)
	rf := addRequestFlags(fs)
	fs.StringVar(&o.out, "out", "", "also copy the PNGs into this folder (the history keeps its own copy)")
	fs.BoolVar(&o.json, "json", false, "print JSON lines on stdout: every worker event, then a final {\"type\":\"done\"} line")
	wf := addWorkerFlags(fs)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: atelier generate --prompt TEXT [options]

Generates images through the Python worker and records the job in the history.
Prints the image paths on stdout (or JSON lines with --json) and progress on stderr.
Exit status: 0 done, 1 the job failed, 2 invalid input (nothing recorded), 130 cancelled.

Options:
`)
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return nil, code, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "atelier generate: unexpected argument %q: give the prompt with --prompt \"...\" (quoted)\n", fs.Arg(0))
		return nil, exitUsage, false
	}
	var err error
	if o.worker, err = wf.flags(); err != nil {
		fmt.Fprintf(stderr, "atelier generate: %v\n", err)
		return nil, exitUsage, false
	}
	o.req, o.buildErr = rf.build()
	o.count = rf.count()
	return o, exitOK, true
}

func cmdGenerate(args []string, stdout, stderr io.Writer) int {
	o, code, ok := parseGenerate(args, stdout, stderr)
	if !ok {
		return code
	}
	emit := jsonEmitter(stdout, o.json)
	if o.buildErr != nil {
		// Refused before anything starts; told in flag names.
		return reportFailure(context.Background(), o.buildErr, nil, stdout, stderr, emit)
	}
	if o.out != "" {
		// Refuse a bad --out before the job, not after the work is done.
		if fi, err := os.Stat(o.out); err == nil && !fi.IsDir() {
			msg := fmt.Sprintf("%s is a file, not a folder: give a folder for the copies", o.out)
			fmt.Fprintf(stderr, "atelier generate: invalid --out: %s\n", msg)
			emit(doneLine{Type: "done", Error: &jsonError{Code: failure.ErrInvalidRequest, Message: msg, Field: "out"}})
			return exitUsage
		}
	}

	a, err := openAppWith(stderr, o.worker)
	if err != nil {
		fmt.Fprintln(stderr, "atelier generate:", err)
		emit(doneLine{Type: "done", Error: &jsonError{Code: failure.ErrInternal, Message: err.Error()}})
		return exitFailure
	}
	defer a.close()

	ctx, stop := interruptContext()
	defer stop()

	// --batch-count N runs N jobs one after another; job k starts at seed +
	// k × batch size, from one random seed resolved here.
	reqs, err := request.ExpandBatchCount(o.req, o.count)
	if err != nil {
		return reportFailure(ctx, err, nil, stdout, stderr, emit)
	}
	// Said before the worker starts, so that one can still stop and choose a smaller size.
	if w := a.runner.SlowCPUWarning(ctx, reqs[0]); w != "" {
		fmt.Fprintln(stderr, "warning: "+w)
	}
	if held, l, err := a.runner.HoldsDevice(ctx); err == nil && !held {
		fmt.Fprintf(stderr, "note: Atelier process %d holds %s, so its worker runs this job (no second copy of the model)\n", l.PID, l.Device)
	}
	var all []protocol.ImageResult
	var jobIDs []int64
	var last *jobs.JobOutcome
	for k, req := range reqs {
		if len(reqs) > 1 {
			fmt.Fprintf(stderr, "job %d of %d (seed %d)\n", k+1, len(reqs), req.Seed)
		}
		prog := newProgress(stderr)
		prog.refiner = req.Refiner != ""
		a.starting.set(func(msg string) { prog.event(protocol.Loading{Message: msg}) })
		began := time.Now()
		outcome, err := a.runner.Run(ctx, req, func(m protocol.Message) {
			prog.event(m)
			if o.json {
				emit(m)
			}
		})
		a.starting.set(nil)
		waited := time.Since(began)
		prog.finish()
		if err != nil {
			if k > 0 && !o.json {
				// The earlier jobs' images are made and recorded: list them.
				for _, im := range all {
					fmt.Fprintln(stdout, im.Path)
				}
			}
			return reportFailure(ctx, err, outcome, stdout, stderr, emit)
		}
		all = append(all, outcome.Images...)
		jobIDs = append(jobIDs, outcome.JobID)
		last = outcome
		if m := outcome.Metrics; m != nil {
			fmt.Fprintln(stderr, doneLineText(m, waited, prog.loaded))
			if m.VAEFallback {
				fmt.Fprintln(stderr, "note: the VAE ran in float32 because it produced NaNs at the model's precision (vae_fallback)")
			}
		}
		if len(outcome.ControlImages) > 0 {
			fmt.Fprintf(stderr, "control images: %s\n", strings.Join(outcome.ControlImages, ", "))
		}
	}

	paths := make([]string, len(all))
	for i, im := range all {
		paths[i] = im.Path
	}
	var copies []string
	if o.out != "" {
		if copies, err = copyImages(paths, o.out); err != nil {
			fmt.Fprintf(stderr, "atelier generate: the images are in the history, but copying them to %s failed: %v\n", o.out, err)
			emit(doneLine{Type: "done", Error: &jsonError{Code: failure.ErrInternal, Message: err.Error(), Field: "out"}})
			return exitFailure
		}
	}
	if o.json {
		d := doneLine{Type: "done", OK: true, JobID: last.JobID, UID: last.UID,
			Images: all, Copies: copies, Metrics: last.Metrics, ControlImages: last.ControlImages}
		if len(jobIDs) > 1 {
			d.JobIDs = jobIDs
		}
		emit(d)
	} else {
		shown := paths
		if copies != nil {
			shown = copies
		}
		for _, p := range shown {
			fmt.Fprintln(stdout, p)
		}
	}
	return exitOK
}

// reportFailure explains err on stderr (and as the final JSON line) and picks
// the exit status.
func reportFailure(ctx context.Context, err error, outcome *jobs.JobOutcome, stdout, stderr io.Writer, emit func(any)) int {
	if v, ok := request.AsValidation(err); ok {
		var msgs []string
		for _, f := range v.Fields {
			fmt.Fprintf(stderr, "atelier generate: %s\n", describeField(f.Field, f.Message))
			msgs = append(msgs, f.Error())
		}
		fmt.Fprintln(stderr, "Nothing was generated or recorded. Run \"atelier generate --help\" for the limits.")
		emit(doneLine{Type: "done", Error: &jsonError{Code: failure.ErrInvalidRequest,
			Message: strings.Join(msgs, "; "), Field: v.Fields[0].Field}})
		return exitUsage
	}
	var jerr *failure.JobError
	if !errors.As(err, &jerr) {
		if outcome != nil {
			for _, im := range outcome.Images {
				fmt.Fprintln(stdout, im.Path)
			}
		}
		fmt.Fprintln(stderr, "atelier generate:", err)
		emit(doneLine{Type: "done", Error: &jsonError{Code: failure.ErrInternal, Message: err.Error()}})
		return exitFailure
	}
	emit(doneLine{Type: "done", Error: &jsonError{Code: jerr.Code, Message: jerr.Message, Detail: jerr.Detail, Field: jerr.Field}})
	switch {
	case jerr.Code == failure.ErrCancelled && ctx.Err() != nil:
		fmt.Fprintln(stderr, "atelier generate: cancelled; the job is recorded as cancelled")
		return exitCancelled
	case jerr.Field != "" && jerr.Code != failure.ErrDiskFull: // a full disk is no wrong input
		fmt.Fprintf(stderr, "atelier generate: %s\n", describeField(jerr.Field, jerr.Message))
		return exitUsage
	}
	fmt.Fprintf(stderr, "atelier generate: the job failed: %s: %s\n", jerr.Code, jerr.Message)
	if jerr.Detail != "" {
		label := "detail"
		if jerr.Code == failure.ErrWorkerCrashed {
			label = "the worker's last lines on stderr"
		}
		fmt.Fprintf(stderr, "%s:\n%s\n", label, indent(jerr.Detail, "  "))
	}
	return exitFailure
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n")
}

// doneLine is the last line of --json output, whatever happened.
type doneLine struct {
	Type    string                 `json:"type"`
	OK      bool                   `json:"ok"`
	JobID   int64                  `json:"job_id,omitempty"`
	JobIDs  []int64                `json:"job_ids,omitempty"` // with --batch-count N > 1: every job, in order
	UID     string                 `json:"uid,omitempty"`
	Images  []protocol.ImageResult `json:"images,omitempty"`
	Copies  []string               `json:"copies,omitempty"`
	Metrics *protocol.Metrics      `json:"metrics,omitempty"`
	// ControlImages are the preprocessed ControlNet images of the last job.
	ControlImages []string   `json:"control_images,omitempty"`
	Error         *jsonError `json:"error,omitempty"`
}

type jsonError struct {
	Code    failure.ErrorCode `json:"code"`
	Message string            `json:"message"`
	Detail  string            `json:"detail,omitempty"`
	Field   string            `json:"field,omitempty"`
}

// jsonEmitter writes one JSON line per call when on, and nothing otherwise.
// Protocol messages keep their wire form (protocol.Encode writes the fields a
// zero value would lose, such as step 0).
func jsonEmitter(w io.Writer, on bool) func(any) {
	if !on {
		return func(any) {}
	}
	return func(v any) {
		var b []byte
		var err error
		if m, ok := v.(protocol.Message); ok {
			b, err = protocol.Encode(m)
		}
		if b == nil || err != nil {
			if b, err = json.Marshal(v); err != nil {
				return
			}
		}
		w.Write(append(b, '\n')) //nolint:errcheck // nothing to do if stdout is gone
	}
}

// copyImages copies each file into dir, each through a temporary file and a
// rename so that a watcher of dir never sees half a PNG.
func copyImages(paths []string, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var out []string
	for _, src := range paths {
		dst := filepath.Join(dir, filepath.Base(src))
		if err := media.CopyFileAtomic(src, dst); err != nil {
			return out, err
		}
		abs, err := filepath.Abs(dst)
		if err != nil {
			abs = dst
		}
		out = append(out, abs)
	}
	return out, nil
}

// doneLineText is the last progress line: the job's own time, and the time the
// user waited, which includes the worker's start (seconds of imports) when it
// started for this job.
func doneLineText(m *protocol.Metrics, waited time.Duration, started bool) string {
	s := fmt.Sprintf("done in %.1fs (on %s)", m.TotalS, m.Device) // nothing was denoised: an upscale alone
	if m.ItS > 0 {
		s = fmt.Sprintf("done in %.1fs (%.2f it/s on %s, %s)", m.TotalS, m.ItS, m.Device, m.Dtype)
	}
	s += fmt.Sprintf("; %.1fs in all", waited.Seconds())
	if started {
		s += ", the worker's start included"
	}
	return s
}

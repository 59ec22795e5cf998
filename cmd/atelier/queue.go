package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"atelier/bridge"
	"atelier/core/failure"
	"atelier/core/jobs"
	"atelier/core/paths"
	"atelier/core/request"
	"atelier/core/store"
)

const queueUsage = `Usage: atelier queue COMMAND [options]

The queue keeps jobs in the history database: they survive a crash, a
restart and a killed worker. The app runs the queue in the background;
"atelier queue run" runs it without a window.

Commands:
  add [generate options] [--batch-count N]   queue a job (N jobs with --batch-count)
  add --file JOBS.jsonl                      queue one job per line (JSON request)
  list [--json]                              the queue with status, progress and ETA
  run [--json] [--watch]                     run pending jobs until none are left
      [--workers N] [--ray ADDRESS]            (one worker per GPU, N workers, or a Ray cluster)
  pause | resume                             stop or restart taking new jobs
  cancel ID...                               cancel jobs (a running one within a step)
  retry ID...                                queue failed, cancelled or interrupted jobs again
  clear [--all]                              drop finished jobs from the list (--all: cancel pending too)
  sessions [--json]                          sessions with their counts, time and speed
  retries [N]                                show or set how often a crashed job is re-run (default 1)

Run "atelier queue COMMAND --help" for a command's options.
`

func cmdQueue(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, queueUsage)
		return exitUsage
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "add":
		return queueAdd(rest, stdout, stderr)
	case "list", "ls":
		return queueList(rest, stdout, stderr)
	case "run":
		return queueRun(rest, stdout, stderr)
	case "pause", "resume":
		return queueSimple(sub, rest, stdout, stderr, func(ctx context.Context, s *store.Store, _ []int64) error {
			if err := s.SetQueuePaused(ctx, sub == "pause"); err != nil {
				return err
			}
			if sub == "pause" {
				fmt.Fprintln(stdout, "queue paused: the running job finishes, no other starts")
			} else {
				fmt.Fprintln(stdout, "queue resumed")
			}
			return nil
		})
	case "cancel":
		return queueSimple(sub, rest, stdout, stderr, func(ctx context.Context, s *store.Store, ids []int64) error {
			var errs []error
			for _, id := range ids {
				st, err := s.CancelJob(ctx, id)
				switch {
				case err != nil:
					errs = append(errs, err)
				case st == store.StatusRunning:
					fmt.Fprintf(stdout, "job %d: cancel requested; it stops within a step\n", id)
				default:
					fmt.Fprintf(stdout, "job %d: cancelled\n", id)
				}
			}
			return errors.Join(errs...)
		})
	case "retry":
		return queueSimple(sub, rest, stdout, stderr, func(ctx context.Context, s *store.Store, ids []int64) error {
			var errs []error
			for _, id := range ids {
				nid, err := s.RetryJob(ctx, id)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(stdout, "job %d: queued again as job %d\n", id, nid)
			}
			return errors.Join(errs...)
		})
	case "clear":
		return queueClear(rest, stdout, stderr)
	case "sessions":
		return queueSessions(rest, stdout, stderr)
	case "retries":
		return queueRetries(rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, queueUsage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "atelier queue: unknown command %q\n\n%s", sub, queueUsage)
		return exitUsage
	}
}

func openStore(stderr io.Writer, name string) (*store.Store, paths.Paths, bool) {
	dirs := paths.DefaultPaths()
	if err := dirs.EnsureDirs(); err != nil {
		fmt.Fprintf(stderr, "atelier %s: %v\n", name, err)
		return nil, dirs, false
	}
	s, err := store.OpenStore(dirs.DB)
	if err != nil {
		fmt.Fprintf(stderr, "atelier %s: %v\n", name, err)
		return nil, dirs, false
	}
	return s, dirs, true
}

// openStoreToRead opens the history for a command that only reads it. When
// the history cannot be written (a read-only folder) it is opened read-only,
// with a note, instead of failing.
func openStoreToRead(stderr io.Writer, name string) (*store.Store, paths.Paths, bool) {
	dirs := paths.DefaultPaths()
	dirsErr := dirs.EnsureDirs()
	s, err := store.OpenStore(dirs.DB)
	if errors.Is(err, store.ErrReadOnly) {
		if ro, roErr := store.OpenReadOnly(dirs.DB); roErr == nil {
			fmt.Fprintf(stderr, "note: %s cannot be written, so it is shown as it was last written\n", dirs.DB)
			return ro, dirs, true
		}
	}
	if err == nil {
		return s, dirs, true // a folder that could not be made is no matter for reading
	}
	if dirsErr != nil {
		err = dirsErr // it says which folder, and came first
	}
	fmt.Fprintf(stderr, "atelier %s: %v\n", name, err)
	return nil, dirs, false
}

// queueSimple runs a subcommand that takes job ids (or nothing, for pause
// and resume) and no options.
func queueSimple(sub string, args []string, stdout, stderr io.Writer, do func(context.Context, *store.Store, []int64) error) int {
	name := "queue " + sub
	wantIDs := sub == "cancel" || sub == "retry"
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		if wantIDs {
			fmt.Fprintf(fs.Output(), "Usage: atelier queue %s ID...\n", sub)
		} else {
			fmt.Fprintf(fs.Output(), "Usage: atelier queue %s\n", sub)
		}
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	var ids []int64
	for _, a := range fs.Args() {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || id <= 0 {
			fmt.Fprintf(stderr, "atelier %s: %q is not a job id (see \"atelier queue list\")\n", name, a)
			return exitUsage
		}
		ids = append(ids, id)
	}
	if wantIDs && len(ids) == 0 {
		fmt.Fprintf(stderr, "atelier %s: give one or more job ids (see \"atelier queue list\")\n", name)
		return exitUsage
	}
	if !wantIDs && len(ids) > 0 {
		fmt.Fprintf(stderr, "atelier %s: takes no arguments\n", name)
		return exitUsage
	}
	s, _, ok := openStore(stderr, name)
	if !ok {
		return exitFailure
	}
	defer s.Close()
	if err := do(context.Background(), s, ids); err != nil {
		fmt.Fprintf(stderr, "atelier %s: %v\n", name, err)
		if errors.Is(err, store.ErrNotFound) {
			return exitUsage
		}
		return exitFailure
	}
	return exitOK
}

// fileJob is one line of a jobs file: a request (the generate JSON fields,
// defaults for the rest) and how many jobs to make of it.
type fileJob struct {
	request.Request
	BatchCount int `json:"batch_count,omitempty"`
	// Device pins the line's jobs to one device (cpu, cuda:N).
	Device string `json:"device,omitempty"`
}

// readJobsFile reads one request per line, with the device each job is
// pinned to ("" for any); blank lines and lines starting with # are skipped.
// Every line is checked before anything is queued, and errors name their line.
func readJobsFile(path string) ([]request.Request, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	var out []request.Request
	var devices []string
	var errs []error
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		j := fileJob{Request: request.DefaultRequest(), BatchCount: 1}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&j); err != nil {
			errs = append(errs, fmt.Errorf("line %d: %v", n, err))
			continue
		}
		if j.Device != "" {
			if err := store.CheckDevice(j.Device); err != nil {
				errs = append(errs, fmt.Errorf("line %d: invalid \"device\": %v", n, err))
				continue
			}
		}
		reqs, err := prepareJobs(j.Request, j.BatchCount)
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: %v", n, describeFileError(err)))
			continue
		}
		out = append(out, reqs...)
		for range reqs {
			devices = append(devices, j.Device)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	if len(out) == 0 {
		return nil, nil, errors.New("no jobs in the file (one JSON request per line, e.g. {\"prompt\": \"a lighthouse\", \"steps\": 20})")
	}
	return out, devices, nil
}

// prepareJobs expands a batch count and checks every job as the queue needs.
func prepareJobs(req request.Request, count int) ([]request.Request, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	reqs, err := request.ExpandBatchCount(req, count)
	if err != nil {
		return nil, err
	}
	for i := range reqs {
		if reqs[i], err = request.PrepareForQueue(reqs[i]); err != nil {
			return nil, err
		}
	}
	return reqs, nil
}

// describeFileError tells a validation error in the file's JSON field names.
func describeFileError(err error) string {
	if v, ok := request.AsValidation(err); ok {
		parts := make([]string, len(v.Fields))
		for i, f := range v.Fields {
			parts[i] = fmt.Sprintf("invalid %q: %s", f.Field, f.Message)
		}
		return strings.Join(parts, "; ")
	}
	var jerr *failure.JobError
	if errors.As(err, &jerr) && jerr.Field != "" {
		return fmt.Sprintf("invalid %q: %s", jerr.Field, jerr.Message)
	}
	return err.Error()
}

// describeRequestError tells a validation error field by field in flag names.
func describeRequestError(err error) string {
	if v, ok := request.AsValidation(err); ok {
		parts := make([]string, len(v.Fields))
		for i, f := range v.Fields {
			parts[i] = describeField(f.Field, f.Message)
		}
		return strings.Join(parts, "; ")
	}
	var jerr *failure.JobError
	if errors.As(err, &jerr) && jerr.Field != "" {
		return describeField(jerr.Field, jerr.Message)
	}
	return err.Error()
}

func queueAdd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("queue add", flag.ContinueOnError)
	rf := addRequestFlags(fs)
	file := fs.String("file", "", "queue one job per line of this file: a JSON request with the generate fields "+
		`(prompt, negative_prompt, model, steps, cfg, width, height, seed, batch_size, …) and optionally batch_count`)
	sessionName := fs.String("session", "", "name of the session the jobs belong to (default: the file name, or the time)")
	device := fs.String("device", "", "run the jobs only on this device: cpu, or cuda:N for GPU N as nvidia-smi numbers it "+
		"(default: whichever worker is free; in a file, a line's \"device\" field)")
	asJSON := fs.Bool("json", false, "print the queued job ids as a JSON array")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: atelier queue add --prompt TEXT [generate options] [--batch-count N]
       atelier queue add --file JOBS.jsonl

Queues jobs in the history database; "atelier queue run" or the app runs them.
Every job is checked first: if one is wrong, nothing is queued.

Options:
`)
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "atelier queue add: unexpected argument %q: give the prompt with --prompt \"...\" (quoted)\n", fs.Arg(0))
		return exitUsage
	}
	var reqs []request.Request
	var devices []string
	source, name := store.SessionCLI, *sessionName
	if *file != "" {
		given := false
		fs.Visit(func(f *flag.Flag) {
			if f.Name != "file" && f.Name != "session" && f.Name != "json" && f.Name != "device" {
				given = true
			}
		})
		if given {
			fmt.Fprintln(stderr, "atelier queue add: --file takes the requests from the file; give no request flags with it")
			return exitUsage
		}
		if *device != "" {
			fmt.Fprintln(stderr, "atelier queue add: with --file, pin jobs with each line's \"device\" field, not --device")
			return exitUsage
		}
		var err error
		if reqs, devices, err = readJobsFile(*file); err != nil {
			fmt.Fprintf(stderr, "atelier queue add: %s: %v\nNothing was queued.\n", *file, err)
			return exitUsage
		}
		source = store.SessionFile
		if name == "" {
			name = filepath.Base(*file)
		}
	} else {
		if *device != "" {
			if err := store.CheckDevice(*device); err != nil {
				fmt.Fprintf(stderr, "atelier queue add: --device: %v\nNothing was queued.\n", err)
				return exitUsage
			}
		}
		req, err := rf.build()
		if err == nil {
			reqs, err = prepareJobs(req, rf.count())
		}
		if err != nil {
			fmt.Fprintf(stderr, "atelier queue add: %s\nNothing was queued. Run \"atelier queue add --help\" for the limits.\n",
				strings.ReplaceAll(describeRequestError(err), "\n", "\n  "))
			return exitUsage
		}
		for range reqs {
			devices = append(devices, *device)
		}
	}

	s, _, ok := openStore(stderr, "queue add")
	if !ok {
		return exitFailure
	}
	defer s.Close()
	ctx := context.Background()
	session, err := s.NewSession(ctx, name, source)
	if err != nil {
		fmt.Fprintln(stderr, "atelier queue add:", err)
		return exitFailure
	}
	ids, err := s.EnqueuePinned(ctx, session, reqs, devices)
	if err != nil {
		fmt.Fprintln(stderr, "atelier queue add:", err)
		return exitFailure
	}
	if *asJSON {
		json.NewEncoder(stdout).Encode(ids) //nolint:errcheck // nothing to do if stdout is gone
	} else {
		for i, id := range ids {
			fmt.Fprintf(stdout, "%d\tqueued (seed %d) %s\n", id, reqs[i].Seed, shorten(reqs[i].Prompt, 50))
		}
	}
	if paused, _ := s.QueuePaused(ctx); paused {
		fmt.Fprintln(stderr, "note: the queue is paused; \"atelier queue resume\" lets it run")
	}
	return exitOK
}

// queueView is a job of "queue list --json".
type queueView struct {
	store.QueueJob
	ETAS *float64 `json:"eta_s,omitempty"`
}

func queueList(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("queue list", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print a JSON object: the jobs (with eta_s), paused, and the whole queue's eta_s")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: atelier queue list [--json]\n\nThe queue: running and waiting jobs in order, then finished ones.\n\nOptions:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	s, _, ok := openStoreToRead(stderr, "queue list")
	if !ok {
		return exitFailure
	}
	defer s.Close()
	ctx := context.Background()
	queued, err := s.QueueJobs(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "atelier queue list:", err)
		return exitFailure
	}
	// Jobs that Atelier processes submitted to the worker of the process
	// holding their device: not queue jobs, but they run first.
	submitted, err := s.SubmittedJobs(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "atelier queue list:", err)
		return exitFailure
	}
	paused, _ := s.QueuePaused(ctx)
	rate, _ := s.MeasuredRate(ctx, 20)
	eta := jobs.EstimateQueue(queued, rate, nil)
	if *asJSON {
		out := struct {
			Jobs      []queueView          `json:"jobs"`
			Submitted []store.SubmittedJob `json:"submitted"`
			Paused    bool                 `json:"paused"`
			ETAS      *float64             `json:"eta_s,omitempty"`
		}{Jobs: []queueView{}, Submitted: submitted, Paused: paused}
		for _, j := range queued {
			v := queueView{QueueJob: j}
			if d, ok := eta.Job[j.ID]; ok {
				sec := d.Seconds()
				v.ETAS = &sec
			}
			out.Jobs = append(out.Jobs, v)
		}
		if eta.Known && len(eta.Job) > 0 {
			sec := eta.Total.Seconds()
			out.ETAS = &sec
		}
		return printJSON(stdout, stderr, "queue list", out)
	}
	printSubmitted(stdout, submitted)
	if len(queued) == 0 {
		fmt.Fprintln(stderr, "The queue is empty. Add jobs with: atelier queue add --prompt \"a lighthouse\" --batch-count 4")
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tPROGRESS\tETA\tMODEL\tSTEPS\tSIZE\tSEED\tPROMPT")
	for _, j := range queued {
		r := j.Request
		status := j.Status
		if j.CancelRequested {
			status += " (cancelling)"
		} else if j.ErrorCode != "" && j.Status != store.StatusCancelled {
			status += " (" + j.ErrorCode + ")"
		}
		progress := "-"
		if j.Status == store.StatusRunning && j.Total > 0 {
			progress = fmt.Sprintf("%d/%d", j.Step, j.Total)
		} else if j.Status == store.StatusDone {
			progress = "100%"
		}
		etaS := "-"
		if d, ok := eta.Job[j.ID]; ok {
			etaS = formatDuration(d)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%dx%d\t%d\t%s\n", j.ID, status, progress, etaS,
			shorten(request.ModelName(r.Model), 20), r.Steps, r.Width, r.Height, r.Seed, shorten(r.Prompt, 40))
	}
	tw.Flush() //nolint:errcheck // nothing to do if stdout is gone
	counts, _ := s.QueueCounts(ctx)
	summary := fmt.Sprintf("%d waiting, %d running, %d done, %d failed",
		counts[store.StatusPending]+counts[store.StatusInterrupted], counts[store.StatusRunning],
		counts[store.StatusDone], counts[store.StatusFailed])
	if len(eta.Job) > 0 {
		if eta.Known {
			summary += " · queue ETA " + formatDuration(eta.Total)
		} else {
			summary += " · ETA unknown until a job has run"
		}
	}
	if paused {
		summary += " · PAUSED (atelier queue resume)"
	}
	fmt.Fprintln(stdout, summary)
	return exitOK
}

// printSubmitted lists the jobs submitted to another process's worker, each
// marked with the device whose holder runs it and the process that asked.
func printSubmitted(stdout io.Writer, submitted []store.SubmittedJob) {
	if len(submitted) == 0 {
		return
	}
	fmt.Fprintln(stdout, "Submitted by Atelier processes to the worker holding their device (they run before the queue):")
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tPROGRESS\tRUNS ON\tASKED BY\tMODEL\tSTEPS\tSIZE\tSEED\tPROMPT")
	for _, j := range submitted {
		r := j.Request
		progress := "-"
		if j.Status == store.StatusRunning && j.Total > 0 {
			progress = fmt.Sprintf("%d/%d", j.Step, j.Total)
		}
		status := "submitted, " + j.Status
		if j.CancelRequested {
			status += " (cancelling)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\tpid %d\t%s\t%d\t%dx%d\t%d\t%s\n", j.ID, status, progress, j.RunOn, j.SubmitterPID,
			shorten(request.ModelName(r.Model), 20), r.Steps, r.Width, r.Height, r.Seed, shorten(r.Prompt, 40))
	}
	tw.Flush() //nolint:errcheck // nothing to do if stdout is gone
	fmt.Fprintln(stdout)
}

func formatDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Round(time.Second).Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	default:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
}

func queueClear(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("queue clear", flag.ContinueOnError)
	all := fs.Bool("all", false, "also cancel the jobs that have not started")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: atelier queue clear [--all]\n\nDrops finished jobs from the queue list; they stay in the history.\n\nOptions:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	s, _, ok := openStore(stderr, "queue clear")
	if !ok {
		return exitFailure
	}
	defer s.Close()
	n, err := s.ClearQueue(context.Background(), *all)
	if err != nil {
		fmt.Fprintln(stderr, "atelier queue clear:", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "%d jobs cleared from the queue (the history keeps them)\n", n)
	return exitOK
}

func queueSessions(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("queue sessions", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print a JSON array")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: atelier queue sessions [--json]\n\nSessions (a sitting of the app, a batch file) with their figures.\n\nOptions:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	s, _, ok := openStore(stderr, "queue sessions")
	if !ok {
		return exitFailure
	}
	defer s.Close()
	list, err := s.Sessions(context.Background())
	if err != nil {
		fmt.Fprintln(stderr, "atelier queue sessions:", err)
		return exitFailure
	}
	if *asJSON {
		if err := json.NewEncoder(stdout).Encode(list); err != nil {
			return exitFailure
		}
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCREATED\tSOURCE\tNAME\tJOBS\tDONE\tFAILED\tWAITING\tIMAGES\tTIME\tMEAN IT/S")
	for _, x := range list {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%.1fs\t%.2f\n", x.ID, x.CreatedAt.Local().Format("2006-01-02 15:04"),
			x.Source, shorten(x.Name, 30), x.Jobs, x.Done, x.Failed, x.Pending, x.Images, x.TotalS, x.MeanItS)
	}
	tw.Flush() //nolint:errcheck // nothing to do if stdout is gone
	return exitOK
}

func queueRetries(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("queue retries", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: atelier queue retries [N]\n\nShows or sets how many times a job is run again after the app or the worker died under it.\n")
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 1 {
		fmt.Fprintln(stderr, "atelier queue retries: takes at most one number")
		return exitUsage
	}
	s, _, ok := openStore(stderr, "queue retries")
	if !ok {
		return exitFailure
	}
	defer s.Close()
	ctx := context.Background()
	if fs.NArg() == 1 {
		n, err := strconv.Atoi(fs.Arg(0))
		if err != nil || n < 0 {
			fmt.Fprintf(stderr, "atelier queue retries: %q is not a number >= 0\n", fs.Arg(0))
			return exitUsage
		}
		if err := s.SetQueueRetries(ctx, n); err != nil {
			fmt.Fprintln(stderr, "atelier queue retries:", err)
			return exitFailure
		}
	}
	fmt.Fprintf(stdout, "%d\n", s.QueueRetries(ctx))
	return exitOK
}

// queueRunLine is a --json line of "queue run" about a job.
type queueRunLine struct {
	Type     string         `json:"type"` // job_started, job_finished, done
	JobID    int64          `json:"job_id,omitempty"`
	UID      string         `json:"uid,omitempty"`
	Slot     string         `json:"slot,omitempty"` // the worker slot that runs it (with --workers)
	Status   string         `json:"status,omitempty"`
	Attempts int            `json:"attempts,omitempty"`
	Images   []string       `json:"images,omitempty"`
	Error    *jsonError     `json:"error,omitempty"`
	OK       bool           `json:"ok,omitempty"`
	Counts   map[string]int `json:"counts,omitempty"`
}

// deviceHeldLine is the --json line of "queue run" saying that another
// process holds a slot's device.
type deviceHeldLine struct {
	Type   string `json:"type"` // device_held, or device_free (without device and pid)
	Slot   string `json:"slot,omitempty"`
	Device string `json:"device,omitempty"`
	PID    int    `json:"pid,omitempty"`
}

func queueRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("queue run", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON lines on stdout: job_started, every worker event, job_finished, then done")
	watch := fs.Bool("watch", false, "keep running and wait for new jobs instead of exiting when the queue is empty")
	rayAddr := fs.String("ray", "", "run the jobs on the Ray cluster at `ADDRESS` (HOST:PORT of its head, or ray://HOST:10001; "+
		"\"saved\": the Settings window's Ray address); see docs/scaling.md")
	wf := addWorkerFlags(fs)
	workers := fs.Int("workers", 0, "how many workers run jobs side by side, each taking the next job when it is free "+
		"(default: one per GPU, found through CUDA_VISIBLE_DEVICES or nvidia-smi; one on a machine without a GPU, "+
		"where N gives N CPU workers; with --ray, N actors, default one per GPU of the cluster, or per CPU without GPUs)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: atelier queue run [--json] [--watch] [--workers N] [--ray ADDRESS]

Runs the queue's jobs until none are left: one worker per GPU (each sees
only its own GPU), each running one job at a time and taking the next job
when it is free. A job queued with --device runs only on that device.
With --ray the workers are actors on a Ray cluster (one per GPU there),
which holds the models; the images come back into the local history.
Ctrl-C stops: the running jobs go back to the queue and run next time.
Exit status: 0 every job done, 1 a job failed, 130 stopped.

Options:
`)
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "atelier queue run: takes no arguments")
		return exitUsage
	}
	flags, err := wf.flags()
	if err != nil {
		fmt.Fprintln(stderr, "atelier queue run:", err)
		return exitUsage
	}
	addr := strings.TrimSpace(*rayAddr)
	if addr == "" && *rayAddr != "" {
		fmt.Fprintln(stderr, "atelier queue run: --ray needs the cluster's address, e.g. --ray 10.0.0.5:6379")
		return exitUsage
	}
	ctx, stop := interruptContext()
	defer stop()
	history, dirs, ok := openStore(stderr, "queue run")
	if !ok {
		return exitFailure
	}
	defer history.Close()
	base, _, err := bridgeConfig(dirs, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "atelier queue run:", err)
		return exitFailure
	}
	stored, worker := storedWorker(history, flags, &base, stderr)
	if addr == raySaved {
		if addr = stored.RayAddress; addr == "" {
			fmt.Fprintln(stderr, "atelier queue run: --ray saved: no Ray address is saved; set one in the studio's Settings window (Ctrl+,), or give it, e.g. --ray 10.0.0.5:6379")
			return exitUsage
		}
	}
	var specs []bridge.SlotSpec
	if addr != "" {
		cl, err := bridge.ProbeRay(ctx, base, addr)
		if err != nil {
			fmt.Fprintln(stderr, "atelier queue run:", err)
			fmt.Fprintln(stderr, "The jobs stay queued. See docs/scaling.md for starting a cluster.")
			return exitFailure
		}
		if specs, err = bridge.RaySlots(*workers, cl, base, addr); err != nil {
			fmt.Fprintf(stderr, "atelier queue run: --workers %d: %v\n", *workers, err)
			return exitUsage
		}
		fmt.Fprintf(stderr, "queue run: Ray cluster at %s: %d GPU(s), %d CPU(s); %d actor(s) run the jobs\n",
			addr, cl.GPUs, cl.CPUs, len(specs))
	} else if gpus, gerr := gpusFor(worker.Device, bridge.DetectGPUs(ctx)); gerr != nil {
		fmt.Fprintln(stderr, "atelier queue run:", gerr)
		return exitUsage
	} else if specs, err = bridge.LocalSlots(*workers, gpus, base); err != nil {
		fmt.Fprintf(stderr, "atelier queue run: --workers %d: %v\n", *workers, err)
		return exitUsage
	}
	multi := len(specs) > 1
	defer releaseLeases(history) // after the workers stopped
	pool := bridge.OpenPool(history, dirs, specs)
	defer pool.Close()
	shareSlots(pool, worker.Device)
	setImagesFolder(pool.Slots, stored, dirs, stderr)
	if multi {
		names := make([]string, len(specs))
		for i, s := range specs {
			names[i] = s.Name
		}
		fmt.Fprintf(stderr, "queue run: %d workers (%s)\n", len(specs), strings.Join(names, ", "))
	}

	emit := jsonEmitter(stdout, *asJSON)
	var prog *progress
	failed, done := 0, 0
	q := jobs.NewSlotRunner(pool.Slots)
	q.OnEvent = func(e jobs.QueueEvent) {
		// With several workers, each line says whose it is, and there is
		// no progress bar: several jobs' bars would share one line.
		who := ""
		if multi {
			who = e.Slot + ": "
		}
		switch e.Kind {
		case jobs.QueueStarted:
			j := e.Job
			emit(queueRunLine{Type: "job_started", JobID: j.ID, UID: j.UID, Slot: e.Slot, Attempts: j.Attempts})
			note := ""
			if j.Attempts > 1 {
				note = fmt.Sprintf(", run %d", j.Attempts)
			}
			counts, _ := history.QueueCounts(context.WithoutCancel(ctx))
			left := counts[store.StatusPending] + counts[store.StatusInterrupted]
			fmt.Fprintf(stderr, "%sjob %d (seed %d%s, %d more waiting): %s\n", who, j.ID, j.Request.Seed, note, left, shorten(j.Request.Prompt, 60))
			if !multi {
				prog = newProgress(stderr)
			}
		case jobs.QueueDeviceHeld:
			emit(deviceHeldLine{Type: "device_held", Slot: e.Slot, Device: e.Holder.Device, PID: e.Holder.PID})
			fmt.Fprintf(stderr, "%s%s is held by another Atelier process (pid %d), which runs the jobs; "+
				"this one starts no worker there and takes over if that process ends\n", who, e.Holder.Device, e.Holder.PID)
		case jobs.QueueDeviceFree:
			emit(deviceHeldLine{Type: "device_free", Slot: e.Slot})
			fmt.Fprintf(stderr, "%sthe other Atelier process gave its device up; this one holds it now and runs the jobs\n", who)
		case jobs.QueueMessage:
			if prog != nil {
				prog.event(e.Message)
			}
			emit(e.Message)
		case jobs.QueueFinished:
			if prog != nil {
				prog.finish()
				prog = nil
			}
			j := e.Job
			line := queueRunLine{Type: "job_finished", JobID: j.ID, UID: j.UID, Slot: e.Slot, Status: j.Status, Attempts: j.Attempts}
			if e.Outcome != nil {
				for _, im := range e.Outcome.Images {
					line.Images = append(line.Images, im.Path)
				}
			}
			var jerr *failure.JobError
			if errors.As(e.Err, &jerr) {
				line.Error = &jsonError{Code: jerr.Code, Message: jerr.Message, Detail: jerr.Detail, Field: jerr.Field}
			}
			emit(line)
			switch j.Status {
			case store.StatusDone:
				done++
				msg := fmt.Sprintf("%sjob %d done", who, j.ID)
				if m := e.Outcome; m != nil && m.Metrics != nil {
					msg += fmt.Sprintf(" in %.1fs (%.2f it/s)", m.Metrics.TotalS, m.Metrics.ItS)
				}
				fmt.Fprintln(stderr, msg)
			case store.StatusInterrupted:
				fmt.Fprintf(stderr, "%sjob %d: the worker crashed (%s); it runs once more\n", who, j.ID, j.ErrorMessage)
			case store.StatusPending:
				fmt.Fprintf(stderr, "%sjob %d: stopped; it is pending again\n", who, j.ID)
			case store.StatusCancelled:
				fmt.Fprintf(stderr, "%sjob %d cancelled\n", who, j.ID)
			default:
				failed++
				fmt.Fprintf(stderr, "%sjob %d %s: %s: %s\n", who, j.ID, j.Status, j.ErrorCode, j.ErrorMessage)
			}
		}
	}
	paused, _ := history.QueuePaused(ctx)
	if paused && !*watch {
		fmt.Fprintln(stderr, "atelier queue run: the queue is paused; \"atelier queue resume\" lets it run")
	}
	err = q.Run(ctx, !*watch)
	rec := context.WithoutCancel(ctx)
	counts, _ := history.QueueCounts(rec)
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(stderr, "atelier queue run: stopped; waiting jobs stay in the queue")
			emit(queueRunLine{Type: "done", Counts: counts, Error: &jsonError{Code: failure.ErrCancelled, Message: "stopped"}})
			return exitCancelled
		}
		fmt.Fprintln(stderr, "atelier queue run:", err)
		line := queueRunLine{Type: "done", Counts: counts, Error: &jsonError{Code: failure.ErrInternal, Message: err.Error()}}
		var jerr *failure.JobError
		if errors.As(err, &jerr) {
			line.Error = &jsonError{Code: jerr.Code, Message: jerr.Message, Detail: jerr.Detail}
			if jerr.Detail != "" {
				fmt.Fprintf(stderr, "the worker's last lines on stderr:\n%s\n", indent(jerr.Detail, "  "))
			}
		}
		if errors.Is(err, jobs.ErrWorkerUnavailable) {
			fmt.Fprintln(stderr, "The jobs stay queued. Run \"atelier doctor\" to check the worker, then \"atelier queue run\" again.")
		}
		emit(line)
		return exitFailure
	}
	notePinnedElsewhere(rec, history, specs, stderr)
	fmt.Fprintf(stderr, "queue run: %d done, %d failed\n", done, failed)
	emit(queueRunLine{Type: "done", OK: failed == 0, Counts: counts})
	if failed > 0 {
		return exitFailure
	}
	return exitOK
}

// notePinnedElsewhere says which waiting jobs no worker of this run could
// take, since they are pinned to a device it does not serve.
func notePinnedElsewhere(ctx context.Context, history *store.Store, specs []bridge.SlotSpec, stderr io.Writer) {
	served := bridge.DevicesOf(specs)
	if served[""] {
		return // a worker that serves any device took them all
	}
	pinned, err := history.WaitingPinned(ctx)
	if err != nil {
		return
	}
	for dev, n := range pinned {
		if !served[dev] {
			fmt.Fprintf(stderr, "note: %d job(s) pinned to %s stay queued: no worker of this run serves %s "+
				"(run \"atelier queue run\" where that device is, or cancel them)\n", n, dev, dev)
		}
	}
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"atelier/core"
)

func cmdHistory(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("history", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print a JSON array of jobs, with their settings, metrics and images")
	limit := fs.Int("limit", 20, "how many jobs, newest first; 0 for all")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: atelier history [--json] [--limit N]\n\nLists past jobs, newest first.\n\nOptions:\n")
		fs.PrintDefaults()
	}
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return exitOK
		}
		fmt.Fprintf(stderr, "atelier history: %v\nRun \"atelier history --help\" for the options.\n", err)
		return exitUsage
	}
	if fs.NArg() > 0 || *limit < 0 {
		fmt.Fprintln(stderr, "atelier history: takes only --json and --limit N (N >= 0)")
		return exitUsage
	}

	paths := core.DefaultPaths()
	store, err := core.OpenStore(paths.DB)
	if err != nil {
		fmt.Fprintln(stderr, "atelier history:", err)
		return exitFailure
	}
	defer store.Close()
	jobs, err := store.ListJobs(context.Background(), *limit)
	if err != nil {
		fmt.Fprintln(stderr, "atelier history:", err)
		return exitFailure
	}

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(jobs); err != nil {
			fmt.Fprintln(stderr, "atelier history:", err)
			return exitFailure
		}
		return exitOK
	}
	if len(jobs) == 0 {
		fmt.Fprintf(stderr, "No jobs yet in %s. Try: atelier generate --prompt \"a lighthouse\" --steps 4 --width 256 --height 256\n", paths.DB)
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCREATED\tSTATUS\tMODEL\tSTEPS\tSIZE\tSEED\tTIME\tIT/S\tIMAGES\tPROMPT")
	for _, j := range jobs {
		r := j.Request
		timeS, its := "-", "-"
		if m := j.Metrics; m != nil {
			timeS, its = fmt.Sprintf("%.1fs", m.TotalS), fmt.Sprintf("%.2f", m.ItS)
		}
		status := j.Status
		if j.ErrorCode != "" {
			status += " (" + j.ErrorCode + ")"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%dx%d\t%d\t%s\t%s\t%d\t%s\n",
			j.ID, j.CreatedAt.Local().Format("2006-01-02 15:04"), status, shorten(modelName(r.Model), 24),
			r.Steps, r.Width, r.Height, r.Seed, timeS, its, len(j.Images), shorten(r.Prompt, 50))
	}
	if err := tw.Flush(); err != nil {
		return exitFailure
	}
	return exitOK
}

// modelName shows a model folder by its last path element, as the infotext does.
func modelName(m string) string {
	m = strings.TrimRight(m, "/")
	if i := strings.LastIndexByte(m, '/'); i >= 0 {
		return m[i+1:]
	}
	return m
}

func shorten(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"atelier/core/infotext"
	"atelier/core/library"
	"atelier/core/paths"
	"atelier/core/request"
	"atelier/core/store"
)

func cmdHistory(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "import" {
		return historyImport(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "search" {
		return historySearch(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "verify" {
		return historyVerify(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("history", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print a JSON array of jobs, with their settings, metrics and images")
	limit := fs.Int("limit", 20, "how many jobs, newest first; 0 for all")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: atelier history [--json] [--limit N]\n       atelier history search [--model M] [--starred] [--json] [--limit N] WORDS…\n"+
			"       atelier history import FILE.png [--json]\n       atelier history verify JOB_ID [--keep DIR] [--json]\n\n"+
			"Lists past jobs, newest first; search finds images as the gallery does; import reads a PNG's generation settings;\n"+
			"verify regenerates a job and compares the pixels with its recorded images.\n\nOptions:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 || *limit < 0 {
		fmt.Fprintln(stderr, "atelier history: takes only --json and --limit N (N >= 0)")
		return exitUsage
	}

	store, dirs, ok := openStoreToRead(stderr, "history")
	if !ok {
		return exitFailure
	}
	defer store.Close()
	jobs, err := store.ListJobs(context.Background(), *limit)
	if err != nil {
		fmt.Fprintln(stderr, "atelier history:", err)
		return exitFailure
	}

	if *asJSON {
		return printJSON(stdout, stderr, "history", jobs)
	}
	if len(jobs) == 0 {
		fmt.Fprintf(stderr, "No jobs yet in %s. Try: atelier generate --prompt \"a lighthouse\" --steps 4 --width 256 --height 256\n", dirs.DB)
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
			j.ID, j.CreatedAt.Local().Format("2006-01-02 15:04"), status, shorten(request.ModelName(r.Model), 24),
			r.Steps, r.Width, r.Height, r.Seed, timeS, its, len(j.Images), shorten(r.Prompt, 50))
	}
	if err := tw.Flush(); err != nil {
		return exitFailure
	}
	return exitOK
}

// historySearch finds images as the gallery's search does: every word in the
// prompt or negative prompt (the last one as a prefix), plus filters.
func historySearch(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("history search", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print a JSON array of the images found")
	limit := fs.Int("limit", 50, "how many images, newest first; 0 for all")
	model := fs.String("model", "", "only images of this model (as the history stores it: \"tiny\" or a path)")
	starred := fs.Bool("starred", false, "only starred images")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: atelier history search [--model M] [--starred] [--json] [--limit N] WORDS…

Finds images in the history as the gallery's search does: every word must occur
in the prompt or the negative prompt, the last one as the start of a word.

Options:
`)
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	words := fs.Args()
	if *limit < 0 {
		fmt.Fprintln(stderr, "atelier history search: --limit must be 0 or more")
		return exitUsage
	}
	q := store.GalleryQuery{Text: strings.Join(words, " "), Model: *model, Starred: *starred}
	if q.Empty() {
		fmt.Fprintln(stderr, "atelier history search: give words to look for, --model or --starred")
		return exitUsage
	}
	store, dirs, ok := openStoreToRead(stderr, "history search")
	if !ok {
		return exitFailure
	}
	defer store.Close()
	n := *limit
	if n == 0 {
		n = -1
	}
	found, err := store.SearchImages(context.Background(), q, 0, n)
	if err != nil {
		fmt.Fprintln(stderr, "atelier history search:", err)
		return exitFailure
	}
	if *asJSON {
		return printJSON(stdout, stderr, "history search", orEmptyImages(found))
	}
	if len(found) == 0 {
		fmt.Fprintf(stderr, "No image in %s matches.\n", dirs.DB)
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tJOB\tCREATED\tMODEL\tSIZE\tSEED\tSTAR\tPROMPT\tFILE")
	for _, im := range found {
		star := ""
		if im.Starred {
			star = "*"
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%dx%d\t%d\t%s\t%s\t%s\n", im.ID, im.JobID,
			im.CreatedAt.Local().Format("2006-01-02 15:04"), shorten(request.ModelName(im.Model), 24), im.Width, im.Height,
			im.Seed, star, shorten(im.Prompt, 40), im.Path)
	}
	tw.Flush()
	return exitOK
}

// printJSON writes v as indented JSON, the --json output of the listing commands.
func printJSON(stdout, stderr io.Writer, name string, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(stderr, "atelier %s: %v\n", name, err)
		return exitFailure
	}
	return exitOK
}

func orEmptyImages(v []store.ImageRecord) []store.ImageRecord {
	if v == nil {
		return []store.ImageRecord{}
	}
	return v
}

func historyImport(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("history import", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the settings as a JSON request (with notes on values that could not be used)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: atelier history import FILE.png [--json]

Reads the generation settings of a PNG from Atelier, AUTOMATIC1111 or a
compatible tool (its "parameters" text), prints them, and keeps them as the
form's last settings: the next window opens with them.

Options:
`)
		fs.PrintDefaults()
	}
	// The file may come before the options.
	var file string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		file, args = args[0], args[1:]
	}
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return exitOK
		}
		fmt.Fprintf(stderr, "atelier history import: %v\n", err)
		return exitUsage
	}
	if file == "" && fs.NArg() == 1 {
		file = fs.Arg(0)
	} else if fs.NArg() > 0 || file == "" {
		fmt.Fprintln(stderr, "atelier history import: give one PNG file")
		return exitUsage
	}
	dirs := paths.DefaultPaths()
	history, err := store.OpenStore(dirs.DB)
	if err != nil {
		fmt.Fprintln(stderr, "atelier history import:", err)
		return exitFailure
	}
	defer history.Close()
	ctx := context.Background()
	base := request.DefaultRequest()
	if last, ok, _ := history.LastRequest(ctx); ok {
		base = last // what the PNG does not say stays as the form had it
	}
	models := infotext.Models{Dir: dirs.Models}
	if folders, err := library.LibraryFolders(ctx, history); err == nil {
		models.Library = library.ScanLibrary(library.ScanFolders(dirs.Models, folders)) // the library is an aid: an import works without it
	}
	got, err := infotext.ImportPNG(file, base, models)
	if err != nil {
		fmt.Fprintln(stderr, "atelier history import:", err)
		if os.IsNotExist(err) {
			return exitUsage
		}
		return exitFailure
	}
	if err := history.SetLastRequest(ctx, got.Request); err != nil {
		fmt.Fprintln(stderr, "atelier history import:", err)
		return exitFailure
	}
	for _, n := range got.Notes {
		fmt.Fprintln(stderr, "note:", n)
	}
	if *asJSON {
		return printJSON(stdout, stderr, "history import", got)
	}
	r := got.Request
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	for _, kv := range [][2]string{
		{"prompt", r.Prompt}, {"negative", r.NegativePrompt}, {"model", r.Model}, {"scheduler", r.Scheduler},
		{"steps", fmt.Sprint(r.Steps)}, {"cfg", fmt.Sprint(r.CFG)}, {"size", fmt.Sprintf("%dx%d", r.Width, r.Height)},
		{"seed", fmt.Sprint(r.Seed)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], strings.ReplaceAll(kv[1], "\n", " / "))
	}
	tw.Flush() //nolint:errcheck // nothing to do if stdout is gone
	fmt.Fprintln(stderr, "Saved as the form's settings: the studio opens with them.")
	return exitOK
}

func shorten(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"atelier/core/download"
	"atelier/core/library"
	"atelier/core/paths"
)

const modelsDownloadUsage = `Usage:
  atelier models download [base|refiner|vae|OWNER/NAME] [--dest DIR] [--json]

Downloads a model from the Hugging Face hub into Atelier's own models folder,
which the library always scans (--dest DIR chooses another, which is added to
the library). base is SDXL base 1.0 (about 7 GB),
refiner the SDXL refiner 1.0 (about 4.5 GB), vae the SDXL VAE fixed for fp16
(about 0.3 GB); the default is base. Only what Atelier loads is fetched: the
diffusers folder's configs, tokenizers and fp16 safetensors weights.

The free disk space is checked before it starts. Ctrl-C stops it and keeps what
was downloaded: the same command resumes. HF_ENDPOINT, HF_TOKEN and HTTPS_PROXY
are honoured as by the hub's own tools.
`

func cmdModelsDownload(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("models download", flag.ContinueOnError)
	dest := fs.String("dest", "", "the model folder to download into (default: Atelier's own models folder)")
	asJSON := fs.Bool("json", false, "print the downloader's events as JSON lines")
	fs.Usage = func() {}
	// The model may come before or after the flags.
	what, named := "base", false
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		what, args, named = args[0], args[1:], true
	}
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			fmt.Fprint(stdout, modelsDownloadUsage)
			return exitOK
		}
		fmt.Fprintf(stderr, "atelier models download: %v\n%s", err, modelsDownloadUsage)
		return exitUsage
	}
	if fs.NArg() > 1 || (fs.NArg() == 1 && named) {
		fmt.Fprintf(stderr, "atelier models download: give one model\n%s", modelsDownloadUsage)
		return exitUsage
	} else if fs.NArg() == 1 {
		what = fs.Arg(0)
	}
	if _, _, err := download.Resolve(what); err != nil {
		fmt.Fprintln(stderr, "atelier models download:", err)
		return exitUsage
	}
	store, dirs, ok := openStore(stderr, "models download")
	if !ok {
		return exitFailure
	}
	defer store.Close()
	ctx, stop := interruptContext()
	defer stop()
	folder := dirs.Models
	if *dest != "" {
		folder = *dest
	}
	if err := os.MkdirAll(folder, 0o755); err != nil {
		fmt.Fprintf(stderr, "atelier models download: cannot create %s: %v (choose another folder with --dest)\n", folder, err)
		return exitFailure
	}
	target, _ := download.Dest(folder, what)
	bar := &downloadBar{w: stderr, tty: isTerminal(stderr)}
	got, err := downloader(dirs, stderr)(ctx, what, target, func(ev download.Event) {
		if *asJSON {
			b, _ := json.Marshal(ev)
			fmt.Fprintln(stdout, string(b))
			return
		}
		bar.show(ev)
	})
	bar.finish()
	if err != nil {
		fmt.Fprintln(stderr, "atelier models download:", err)
		if e, ok := err.(*download.Error); ok && e.Detail != "" {
			fmt.Fprintln(stderr, e.Detail)
		}
		if download.IsCancelled(err) {
			return exitCancelled
		}
		return exitFailure
	}
	if *dest == "" {
		// Atelier's own folder: the library scans it without being told.
	} else if _, err := library.AddLibraryFolder(ctx, store, folder); err != nil {
		fmt.Fprintln(stderr, "atelier models download: downloaded, but the folder could not be added to the library:", err)
		return exitFailure
	}
	kind := "model"
	for _, e := range library.ScanLibrary([]string{folder}).Entries {
		if e.Path == got && e.Refused == "" {
			kind = string(e.Kind)
		}
	}
	if !*asJSON {
		fmt.Fprintf(stdout, "downloaded %s to %s (a %s in the library); use it with --model %s\n", what, got, kind, got)
	}
	return exitOK
}

// downloader runs core/download with the worker's Python and code, found as
// the bridge finds them (at each call: the studio's set-up may make them).
func downloader(dirs paths.Paths, stderr io.Writer) func(ctx context.Context, what, dest string, onEvent func(download.Event)) (string, error) {
	return func(ctx context.Context, what, dest string, onEvent func(download.Event)) (string, error) {
		cfg, _, err := bridgeConfig(dirs, stderr)
		var argv []string
		var workerDir string
		if err == nil {
			argv, workerDir, err = cfg.WorkerCommand()
		}
		if err != nil {
			return "", err
		}
		return download.Run(ctx, download.Options{Python: argv[0], WorkerDir: workerDir, What: what, Dest: dest, OnEvent: onEvent})
	}
}

// downloadBar draws the progress on a terminal, and a line per tenth elsewhere.
type downloadBar struct {
	w     io.Writer
	tty   bool
	drawn bool
	tenth int64
}

func gb(n int64) string { return fmt.Sprintf("%.2f GB", float64(n)/1e9) }

func (b *downloadBar) show(ev download.Event) {
	switch ev.Event {
	case "plan":
		b.line(fmt.Sprintf("downloading %s: %d files, %s (%s already here, %s free)", ev.Repo, len(ev.Files), gb(ev.Total), gb(ev.Done), gb(ev.Free)))
		b.tenth = -1
	case "progress":
		if ev.Total <= 0 {
			return
		}
		if b.tty {
			filled := int(min(barWidth, ev.Done*barWidth/ev.Total))
			fmt.Fprintf(b.w, "\r\033[K[%s%s] %s / %s  %s", strings.Repeat("#", filled), strings.Repeat("-", barWidth-filled), gb(ev.Done), gb(ev.Total), ev.File)
			b.drawn = true
		} else if t := ev.Done * 10 / ev.Total; t != b.tenth {
			b.tenth = t
			fmt.Fprintf(b.w, "%d%% %s / %s  %s\n", t*10, gb(ev.Done), gb(ev.Total), ev.File)
		}
	}
}

func (b *downloadBar) line(s string) {
	b.finish()
	fmt.Fprintln(b.w, s)
}

func (b *downloadBar) finish() {
	if b.drawn {
		fmt.Fprint(b.w, "\r\033[K")
		b.drawn = false
	}
}

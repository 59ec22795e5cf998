// Package download fetches models from the Hugging Face hub into the model
// library by running the worker's `python -m atelier_worker.download` (the
// same Python and code the worker uses) and reading its JSON-lines progress.
package download

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Preset is a model the first-run panel and `atelier models download` offer by name.
type Preset struct {
	Name   string // what the command line takes: base, refiner, vae
	Repo   string // the hub repository
	Folder string // the folder it gets inside the model folder
	Title  string
	Size   string // roughly, for the offer; the real size comes from the hub
}

// Presets are SDXL base, its refiner and the fp16-safe VAE, in the order offered.
var Presets = []Preset{
	{"base", "stabilityai/stable-diffusion-xl-base-1.0", "stable-diffusion-xl-base-1.0", "SDXL base 1.0", "about 7 GB"},
	{"refiner", "stabilityai/stable-diffusion-xl-refiner-1.0", "stable-diffusion-xl-refiner-1.0", "SDXL refiner 1.0", "about 4.5 GB"},
	{"vae", "madebyollin/sdxl-vae-fp16-fix", "sdxl-vae-fp16-fix", "SDXL VAE (fp16 fix)", "about 0.3 GB"},
}

// Resolve names what to fetch: a preset's name or a repository (owner/name);
// folder is the folder the model gets inside a model folder.
func Resolve(what string) (repo, folder string, err error) {
	for _, p := range Presets {
		if p.Name == what || p.Repo == what {
			return p.Repo, p.Folder, nil
		}
	}
	owner, name, ok := strings.Cut(what, "/")
	if !ok || owner == "" || name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return "", "", fmt.Errorf("%q is neither base, refiner, vae nor a hub repository (owner/name, as on the model's page)", what)
	}
	return what, name, nil
}

// File is one file of the download's plan.
type File struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// Event is one line of the downloader: "plan", "progress", "done" or "error".
type Event struct {
	Event    string `json:"event"`
	Repo     string `json:"repo,omitempty"`
	Dest     string `json:"dest,omitempty"`
	Files    []File `json:"files,omitempty"`
	Total    int64  `json:"total,omitempty"`
	Done     int64  `json:"done,omitempty"`
	Free     int64  `json:"free,omitempty"`
	File     string `json:"file,omitempty"`
	FileDone int64  `json:"file_done,omitempty"`
	FileSize int64  `json:"file_size,omitempty"`
	Kind     string `json:"kind,omitempty"`
	Message  string `json:"message,omitempty"`
}

// Error kinds, as the downloader reports them.
const (
	KindOffline   = "offline"
	KindDisk      = "disk"
	KindCancelled = "cancelled"
	KindHub       = "hub"
	KindUsage     = "usage"
	KindFailed    = "failed"
)

// Error is a download that did not finish; Message says what to do.
type Error struct {
	Kind    string
	Message string
	Detail  string // the downloader's last stderr lines, when it failed unexpectedly
}

func (e *Error) Error() string { return e.Message }

// IsCancelled reports whether err is a cancelled download.
func IsCancelled(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Kind == KindCancelled
}

// Options say which Python runs the downloader and what it fetches.
type Options struct {
	Python    string // the worker's python
	WorkerDir string // the folder holding atelier_worker (its PYTHONPATH)
	What      string // base, refiner, vae or owner/name
	Dest      string // the model's own folder
	Env       []string
	OnEvent   func(Event) // called for every line, on Run's goroutine
}

// Run downloads and returns the model's folder. Cancelling ctx stops the
// downloader with SIGTERM: it keeps the partial file, and the next Run resumes.
func Run(ctx context.Context, o Options) (string, error) {
	cmd := exec.Command(o.Python, "-m", "atelier_worker.download", o.What, "--dest", o.Dest)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+o.WorkerDir, "PYTHONUNBUFFERED=1")
	cmd.Env = append(cmd.Env, o.Env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	var stderr tail
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return "", &Error{Kind: KindFailed, Detail: err.Error(),
			Message: fmt.Sprintf("Atelier could not start the downloader with %s: run `atelier setup` (`make venv` in a clone) to repair the worker's Python.", o.Python)}
	}
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			// Only a downloader that ignores SIGTERM is killed; it normally stops at once.
			select {
			case <-stopped:
			case <-time.After(time.Minute):
				_ = cmd.Process.Kill()
			}
		case <-stopped:
		}
	}()
	var last Event
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		var ev Event
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue // not ours (a library's stray print)
		}
		last = ev
		if o.OnEvent != nil {
			o.OnEvent(ev)
		}
	}
	werr := cmd.Wait()
	close(stopped)
	switch {
	case last.Event == "done" && werr == nil:
		return last.Dest, nil
	case last.Event == "error":
		return "", &Error{Kind: last.Kind, Message: last.Message}
	case ctx.Err() != nil:
		return "", &Error{Kind: KindCancelled, Message: "The download was cancelled; downloading again resumes it."}
	}
	return "", &Error{Kind: KindFailed, Detail: stderr.String(),
		Message: fmt.Sprintf("The downloader stopped unexpectedly (%v). Its last lines are in the detail; if they name a missing module, run `atelier setup --force` (`make venv` in a clone).", werr)}
}

// Dest is where Run puts what: the model folder plus the model's own folder.
func Dest(modelFolder, what string) (string, error) {
	_, folder, err := Resolve(what)
	if err != nil {
		return "", err
	}
	return filepath.Join(modelFolder, folder), nil
}

// tail keeps the last few KB of the downloader's stderr.
type tail struct{ b []byte }

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 8192 {
		t.b = t.b[len(t.b)-8192:]
	}
	return len(p), nil
}

func (t *tail) String() string { return strings.TrimSpace(string(t.b)) }

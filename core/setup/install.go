package setup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Kind sorts set-up failures by what the user has to do.
type Kind string

// The kinds of Error.
const (
	NoPython  Kind = "no_python"
	NoNetwork Kind = "no_network"
	NoDisk    Kind = "no_disk"
	Failed    Kind = "failed"
)

// Error is a set-up failure: what happened, and what to do about it.
type Error struct {
	Kind    Kind
	Message string
	Todo    string
	Detail  string // the last lines of pip's output, when it failed
}

func (e *Error) Error() string { return e.Message + "; what to do: " + e.Todo }

// IndexEnv names a package index (a --index-url) that set-up uses instead of
// pip's default, such as a local mirror.
const IndexEnv = "ATELIER_PIP_INDEX"

// FindLinksEnv names a folder of wheels that set-up installs from with no
// network (pip --no-index --find-links), as --find-links does.
const FindLinksEnv = "ATELIER_FIND_LINKS"

// Estimates for the worker's own requirements on Linux (PyPI's torch carries
// the CUDA libraries): what pip downloads, and what the venv takes on disk.
const (
	DefaultDownloadBytes = 3 << 30
	DefaultInstallBytes  = 7 << 30
)

// Options say how to build the venv.
type Options struct {
	Python       string // the interpreter to use; empty finds one (FindPython)
	Requirements string // the pinned requirements file to install
	// FindLinks is a folder of wheels to install from with no index at all
	// (pip --no-index --find-links), for machines without network.
	FindLinks string
	// IndexURL is a package index; empty means $ATELIER_PIP_INDEX, then pip's own.
	IndexURL string
	// NeedBytes is the free disk space set-up requires; 0 means Estimate's.
	NeedBytes int64
	// Progress, if set, is told each step (from the calling goroutine).
	Progress func(Progress)
}

// Progress is one step of set-up.
type Progress struct {
	Stage    string  // python, venv, download, install, done
	Message  string  // for the user
	Fraction float64 // of the whole set-up, 0..1
}

// Estimate is what set-up will download and how much disk it needs: the
// wheels' sizes from a local folder (nothing is downloaded), or the defaults.
func Estimate(opt Options) (download, disk int64) {
	if opt.FindLinks != "" {
		var total int64
		entries, _ := os.ReadDir(opt.FindLinks)
		for _, e := range entries {
			if info, err := e.Info(); err == nil && !e.IsDir() {
				total += info.Size()
			}
		}
		// Unpacked wheels take about three times their size, plus pip and
		// the venv itself (~30 MB).
		return 0, 3*total + 64<<20
	}
	return DefaultDownloadBytes, DefaultInstallBytes
}

// Install builds the venv for opt.Requirements: it finds a Python, checks the
// free disk space, creates the venv and runs pip install, telling Progress
// each step. A venv left half-made by an earlier attempt is made again; when
// done, the venvs of other requirements (an earlier release's) are removed.
// Errors are *Error.
func Install(ctx context.Context, l Layout, opt Options) (State, error) {
	tell := func(p Progress) {
		if opt.Progress != nil {
			opt.Progress(p)
		}
	}
	st, err := Inspect(l, opt.Requirements)
	if err != nil {
		return st, &Error{Kind: Failed, Message: err.Error(), Todo: "reinstall Atelier: its worker files are damaged"}
	}
	tell(Progress{Stage: "python", Message: "looking for Python 3.10–3.12"})
	py, err := FindPython(ctx, opt.Python)
	if err != nil {
		return st, err
	}
	if err := os.MkdirAll(l.VenvRoot(), 0o755); err != nil {
		return st, &Error{Kind: Failed, Message: fmt.Sprintf("create %s: %v", l.VenvRoot(), err),
			Todo: "make the folder writable, or set ATELIER_HOME to a writable folder"}
	}
	need := opt.NeedBytes
	if need == 0 {
		_, need = Estimate(opt)
	}
	if free, ok := freeBytes(l.VenvRoot()); ok && free < need {
		return st, &Error{Kind: NoDisk,
			Message: fmt.Sprintf("not enough disk space: %s free on the disk of %s, set-up needs about %s", Size(free), l.VenvRoot(), Size(need)),
			Todo:    "free some space on that disk, or set ATELIER_HOME to a folder on a disk with more room"}
	}
	unlock, err := lock(st.Venv + ".lock")
	if err != nil {
		return st, &Error{Kind: Failed, Message: err.Error(), Todo: "wait for the other set-up to finish, or close the other Atelier"}
	}
	defer unlock()

	if err := os.RemoveAll(st.Venv); err != nil {
		return st, &Error{Kind: Failed, Message: fmt.Sprintf("remove the half-made venv %s: %v", st.Venv, err), Todo: "remove that folder by hand"}
	}
	tell(Progress{Stage: "venv", Message: "creating the venv with Python " + py.Version, Fraction: 0.02})
	// The venv is made where it stays: a venv cannot be moved (its scripts
	// name their folder); the ready file, written last, says it is complete.
	if out, err := exec.CommandContext(ctx, py.Path, "-m", "venv", st.Venv).CombinedOutput(); err != nil {
		os.RemoveAll(st.Venv)
		return st, &Error{Kind: Failed, Message: fmt.Sprintf("%s -m venv failed: %v", py.Path, err),
			Todo: fmt.Sprintf("check that the venv module works (`%s -m venv /tmp/test-venv`), or name another Python", py.Path), Detail: lastLines(string(out), 12)}
	}
	tell(Progress{Stage: "venv", Message: "venv created", Fraction: 0.1})

	if err := pipInstall(ctx, st, opt, tell); err != nil {
		// Not removed: pip's cache makes a retry cheap, and Inspect sees
		// the missing ready file either way.
		return st, err
	}
	if err := os.WriteFile(filepath.Join(st.Venv, readyFile), []byte(st.Hash+"\n"+py.Path+" "+py.Version+"\n"), 0o644); err != nil {
		return st, &Error{Kind: NoDisk, Message: "write " + readyFile + ": " + err.Error(), Todo: "free some disk space and start set-up again"}
	}
	for _, old := range st.Stale {
		os.RemoveAll(old)
		os.Remove(old + ".lock")
	}
	st, err = Inspect(l, opt.Requirements)
	if err != nil {
		return st, &Error{Kind: Failed, Message: err.Error(), Todo: "start set-up again"}
	}
	tell(Progress{Stage: "done", Message: "the worker is set up", Fraction: 1})
	return st, nil
}

func pipInstall(ctx context.Context, st State, opt Options, tell func(Progress)) error {
	args := []string{"-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-r", st.Requirements}
	index := opt.IndexURL
	if index == "" {
		index = os.Getenv(IndexEnv)
	}
	switch {
	case opt.FindLinks != "":
		args = append(args, "--no-index", "--find-links", opt.FindLinks)
	case index != "":
		args = append(args, "--index-url", index)
	}
	cmd := exec.CommandContext(ctx, st.Python, args...)
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1", "PIP_PROGRESS_BAR=off")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return &Error{Kind: Failed, Message: err.Error(), Todo: "start set-up again"}
	}
	cmd.Stderr = cmd.Stdout // one stream, in order
	if err := cmd.Start(); err != nil {
		return &Error{Kind: Failed, Message: "start pip: " + err.Error(), Todo: "start set-up again"}
	}
	total := countRequirements(st.Requirements)
	p := &pipProgress{total: total, tell: tell}
	var log strings.Builder
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		log.WriteString(line + "\n")
		p.line(line)
	}
	io.Copy(io.Discard, out) //nolint:errcheck // drain whatever a too-long line left
	werr := cmd.Wait()
	if werr == nil {
		return nil
	}
	if ctx.Err() != nil {
		return &Error{Kind: Failed, Message: "set-up was cancelled", Todo: "start set-up again when you are ready"}
	}
	return classifyPip(log.String(), opt)
}

// countRequirements is the number of requirement lines: pip's "Collecting"
// lines for them measure the resolving and downloading.
func countRequirements(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 1
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, "-") {
			n++
		}
	}
	return max(n, 1)
}

// pipProgress turns pip's lines into Progress. Downloads take 10–80% of the
// bar in steps of one requirement (dependencies keep it just under 80%), the
// install the rest: pip prints nothing while it unpacks, so that stage is one
// step.
type pipProgress struct {
	total, collected int
	tell             func(Progress)
}

func (p *pipProgress) line(line string) {
	t := strings.TrimSpace(line)
	switch {
	case strings.HasPrefix(t, "Collecting "), strings.HasPrefix(t, "Processing "):
		p.collected++
		name := strings.Fields(strings.TrimPrefix(strings.TrimPrefix(t, "Collecting "), "Processing "))[0]
		name = filepath.Base(name)
		frac := 0.1 + 0.7*float64(min(p.collected, p.total))/float64(p.total)
		if p.collected >= p.total {
			frac = 0.79
		}
		p.tell(Progress{Stage: "download", Message: fmt.Sprintf("getting %s (%d of %d+)", name, p.collected, p.total), Fraction: frac})
	case strings.HasPrefix(t, "Downloading "):
		p.tell(Progress{Stage: "download", Message: "downloading " + strings.TrimPrefix(t, "Downloading "), Fraction: 0.1 + 0.7*float64(min(p.collected, p.total))/float64(p.total)})
	case strings.HasPrefix(t, "Installing collected packages:"):
		n := len(strings.Split(strings.TrimPrefix(t, "Installing collected packages:"), ","))
		p.tell(Progress{Stage: "install", Message: fmt.Sprintf("installing %d packages (this takes a while)", n), Fraction: 0.8})
	case strings.HasPrefix(t, "Successfully installed"):
		p.tell(Progress{Stage: "install", Message: "packages installed", Fraction: 0.99})
	}
}

var networkMarks = []string{
	"NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
	"Name or service not known", "Network is unreachable", "Connection refused", "ConnectTimeoutError",
	"Read timed out", "ProxyError", "No route to host", "connection broken",
}

// classifyPip reads a failed pip's output for the cause the user can act on.
func classifyPip(out string, opt Options) error {
	detail := lastLines(out, 15)
	if strings.Contains(out, "No space left on device") || strings.Contains(out, "[Errno 28]") {
		return &Error{Kind: NoDisk, Message: "the disk filled up during pip install", Detail: detail,
			Todo: "free some disk space (set-up needs about 7 GB), or set ATELIER_HOME to a bigger disk, then start set-up again"}
	}
	for _, mark := range networkMarks {
		if strings.Contains(out, mark) {
			return &Error{Kind: NoNetwork, Message: "no network: pip could not reach the package index", Detail: detail,
				Todo: "connect to the network and start set-up again, or point " + IndexEnv +
					" at a reachable index, or use a local folder of wheels (atelier setup --find-links DIR)"}
		}
	}
	if opt.FindLinks != "" && strings.Contains(out, "No matching distribution found") {
		return &Error{Kind: Failed, Message: "the wheel folder " + opt.FindLinks + " lacks a package the worker needs", Detail: detail,
			Todo: "add the missing wheel (named in pip's last lines) to the folder, e.g. with `pip download -r requirements.txt -d DIR` on a machine with network"}
	}
	return &Error{Kind: Failed, Message: "pip install failed", Detail: detail,
		Todo: "read pip's last lines below; start set-up again, or report them"}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Size writes a byte count for people.
func Size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f KB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

var errLocked = errors.New("another set-up of this venv is running")

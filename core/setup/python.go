package setup

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The Pythons the worker's pinned requirements have wheels for.
const (
	minMinor = 10
	maxMinor = 12
)

// Python is an interpreter that can build the worker's venv.
type Python struct {
	Path    string // as found or named
	Version string // e.g. 3.11.7
}

// probeScript prints the version, then fails if venv or ensurepip is missing
// (Debian and Ubuntu ship them in python3.X-venv).
const probeScript = `import sys
print("%d.%d.%d" % sys.version_info[:3], flush=True)
import venv, ensurepip
print("venv ok")`

// FindPython returns the named interpreter if it suits, or else the first of
// python3.12, python3.11, python3.10 and python3 on PATH that does. The
// error says what to install.
func FindPython(ctx context.Context, named string) (Python, error) {
	if named != "" {
		p, err := probePython(ctx, named)
		if err != nil {
			return Python{}, &Error{Kind: NoPython, Message: err.Error(),
				Todo: "name a Python 3.10, 3.11 or 3.12 with its venv module, or leave the field empty to search PATH"}
		}
		return p, nil
	}
	var tried []string
	for _, name := range []string{"python3.12", "python3.11", "python3.10", "python3"} {
		path, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		p, err := probePython(ctx, path)
		if err == nil {
			return p, nil
		}
		tried = append(tried, err.Error())
	}
	msg := "no suitable Python found: Atelier's worker needs Python 3.10, 3.11 or 3.12 with its venv module"
	if len(tried) > 0 {
		msg += " (" + strings.Join(tried, "; ") + ")"
	}
	return Python{}, &Error{Kind: NoPython, Message: msg,
		Todo: "install one, e.g. `sudo apt install python3.11 python3.11-venv` (Debian, Ubuntu) or " +
			"`sudo dnf install python3.11` (Fedora), then start set-up again; or name a Python you have"}
}

func probePython(ctx context.Context, path string) (Python, error) {
	if !filepath.IsAbs(path) {
		if found, err := exec.LookPath(path); err == nil {
			path = found
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "-c", probeScript).Output()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	version := strings.TrimSpace(lines[0])
	if version == "" {
		if errors.Is(err, exec.ErrNotFound) || err != nil && strings.Contains(err.Error(), "no such file") {
			return Python{}, fmt.Errorf("%s does not exist", path)
		}
		return Python{}, fmt.Errorf("%s is not a Python that runs (%v)", path, err)
	}
	parts := strings.Split(version, ".")
	minor, _ := strconv.Atoi(parts[min(1, len(parts)-1)])
	if parts[0] != "3" || minor < minMinor || minor > maxMinor {
		return Python{}, fmt.Errorf("%s is Python %s, not 3.10–3.12", path, version)
	}
	if err != nil {
		return Python{}, fmt.Errorf("%s (Python %s) lacks its venv module: install python3.%d-venv (`sudo apt install python3.%d-venv`)",
			path, version, minor, minor)
	}
	return Python{Path: path, Version: version}, nil
}

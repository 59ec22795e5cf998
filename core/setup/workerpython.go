package setup

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// workerProbe prints the version, then one line per pinned requirement:
// "name<TAB>installed version", or "name<TAB>" when it is missing. It reads
// the pins on its stdin so that the file's path needs no quoting.
const workerProbe = `import sys
print("%d.%d.%d" % sys.version_info[:3], flush=True)
import importlib.metadata as md
for line in sys.stdin:
    name = line.strip()
    if not name:
        continue
    try:
        v = md.version(name)
    except md.PackageNotFoundError:
        v = ""
    print(name + "\t" + v)`

// CheckWorkerPython says whether path is a Python that can run the worker: a
// Python 3.10–3.12 with every package of the requirements file installed. A
// missing package is an error that names it; a package of another version
// than the pin is a note, since the worker may still run. The check runs the
// Python (it imports nothing heavy).
func CheckWorkerPython(ctx context.Context, path, requirements string) (Python, []string, error) {
	if !filepath.IsAbs(path) {
		return Python{}, nil, fmt.Errorf("%q is not an absolute path: give the full path of the python", path)
	}
	if fi, err := os.Stat(path); err != nil {
		return Python{}, nil, fmt.Errorf("%s does not exist: give the path of a python, e.g. the venv's bin/python", path)
	} else if fi.IsDir() {
		return Python{}, nil, fmt.Errorf("%s is a folder: give the python in it (bin/python)", path)
	}
	pins, err := readPins(requirements)
	if err != nil {
		return Python{}, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "-c", workerProbe)
	var names []string
	for _, p := range pins {
		names = append(names, p.name)
	}
	cmd.Stdin = strings.NewReader(strings.Join(names, "\n") + "\n")
	out, err := cmd.Output()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	version := strings.TrimSpace(lines[0])
	if err != nil || version == "" {
		return Python{}, nil, fmt.Errorf("%s is not a Python that runs (%v): give another", path, err)
	}
	if !supportedVersion(version) {
		return Python{}, nil, fmt.Errorf("%s is Python %s, not 3.10–3.12: the worker's libraries need one of those", path, version)
	}
	installed := map[string]string{}
	for _, l := range lines[1:] {
		name, v, _ := strings.Cut(l, "\t")
		installed[name] = strings.TrimSpace(v)
	}
	var missing, notes []string
	for _, p := range pins {
		v := installed[p.name]
		switch {
		case v == "":
			missing = append(missing, p.name)
		case p.version != "" && localless(v) != p.version:
			notes = append(notes, fmt.Sprintf("%s is %s, the worker is tested with %s", p.name, v, p.version))
		}
	}
	if len(missing) > 0 {
		return Python{}, notes, fmt.Errorf("%s (Python %s) lacks the worker's %s: install them with `%s -m pip install -r requirements.txt` from the worker's folder, or leave the field empty for Atelier's own",
			path, version, strings.Join(missing, ", "), path)
	}
	return Python{Path: path, Version: version}, notes, nil
}

func supportedVersion(v string) bool {
	parts := strings.Split(v, ".")
	if len(parts) < 2 || parts[0] != "3" {
		return false
	}
	var minor int
	if _, err := fmt.Sscanf(parts[1], "%d", &minor); err != nil {
		return false
	}
	return minor >= minMinor && minor <= maxMinor
}

// localless drops a local version label: torch's CUDA builds are 2.11.0+cu130.
func localless(v string) string {
	v, _, _ = strings.Cut(v, "+")
	return v
}

type pin struct{ name, version string }

// readPins reads name==version lines; comments, options and blank lines are
// skipped, and a name without == has no version to compare.
func readPins(path string) ([]pin, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read the worker's requirements: %w", err)
	}
	defer f.Close()
	var out []pin
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line, _, _ = strings.Cut(line, ";")
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "-") {
			continue
		}
		name, version, _ := strings.Cut(line, "==")
		name = strings.TrimSpace(name)
		if i := strings.IndexAny(name, "<>=!~[ "); i >= 0 {
			name = name[:i]
		}
		out = append(out, pin{name: name, version: strings.TrimSpace(version)})
	}
	return out, sc.Err()
}

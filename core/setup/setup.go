// Package setup gives an installed Atelier its worker: it unpacks the worker's
// code that the binary carries, finds a suitable Python, and builds the venv
// with the pinned requirements (pip, with progress). It never imports Fyne:
// the CLI's `atelier setup` and the window's set-up screen both drive it.
package setup

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Layout is where set-up keeps what it makes, below the data folder: the
// venv is large and slow to rebuild, so it does not go in the cache, which
// users clear.
type Layout struct {
	Data string // paths.Paths.Data
}

// WorkerRoot holds the unpacked worker, one folder per content hash.
func (l Layout) WorkerRoot() string { return filepath.Join(l.Data, "worker") }

// VenvRoot holds the venv, one folder per requirements hash.
func (l Layout) VenvRoot() string { return filepath.Join(l.Data, "venv") }

// readyFile marks a complete venv; it is written last, so a venv without it
// was interrupted and is made again.
const readyFile = ".atelier-ready"

// markerFile marks a complete unpacked worker.
const markerFile = ".complete"

// contentHash is a short hash over every file's name and bytes.
func contentHash(files fs.FS) (string, error) {
	var names []string
	err := fs.WalkDir(files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			names = append(names, path)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(names)
	h := sha256.New()
	for _, name := range names {
		b, err := fs.ReadFile(files, name)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", name, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// UnpackWorker writes files (the worker's package and requirements.txt) to
// WorkerRoot/<content hash> unless that copy is already complete, and removes
// the copies of other versions, so an upgrade unpacks anew and leaves no old
// code behind. It returns the folder, which becomes the worker's PYTHONPATH.
func UnpackWorker(l Layout, files fs.FS) (string, error) {
	if _, err := fs.Stat(files, "atelier_worker/__main__.py"); err != nil {
		return "", fmt.Errorf("this Atelier binary carries no worker code (it was built without python/): rebuild it with `make build`")
	}
	hash, err := contentHash(files)
	if err != nil {
		return "", fmt.Errorf("read the worker code carried in the binary: %w", err)
	}
	root := l.WorkerRoot()
	dir := filepath.Join(root, hash)
	if _, err := os.Stat(filepath.Join(dir, markerFile)); err == nil {
		removeOthers(root, hash)
		return dir, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", unpackError(root, err)
	}
	// Unpacked beside and renamed into place, so that a half-written copy is
	// never taken for the worker, even by another Atelier starting now.
	tmp, err := os.MkdirTemp(root, "."+hash+".tmp-")
	if err != nil {
		return "", unpackError(root, err)
	}
	defer os.RemoveAll(tmp)
	err = fs.WalkDir(files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		target := filepath.Join(tmp, filepath.FromSlash(path))
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		src, err := files.Open(path)
		if err != nil {
			return err
		}
		defer src.Close()
		dst, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		if _, err := io.Copy(dst, src); err != nil {
			dst.Close()
			return err
		}
		return dst.Close()
	})
	if err == nil {
		err = os.WriteFile(filepath.Join(tmp, markerFile), []byte(hash+"\n"), 0o644)
	}
	if err != nil {
		return "", unpackError(root, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another Atelier unpacked the same version first: use its copy.
		if _, serr := os.Stat(filepath.Join(dir, markerFile)); serr != nil {
			return "", unpackError(root, err)
		}
	}
	removeOthers(root, hash)
	return dir, nil
}

func unpackError(root string, err error) error {
	return fmt.Errorf("unpack the worker's code into %s: %w (free some disk space, or set ATELIER_HOME to a writable folder)", root, err)
}

// removeOthers deletes what root holds besides keep: copies of other
// versions, and temporary folders that an interrupted run left. Best effort:
// a copy that cannot be removed costs only disk space.
func removeOthers(root, keep string) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.Name() == keep || strings.HasPrefix(e.Name(), keep+".lock") {
			continue
		}
		// A temporary folder of the current version may belong to another
		// Atelier unpacking right now.
		if strings.HasPrefix(e.Name(), "."+keep+".tmp-") {
			continue
		}
		os.RemoveAll(filepath.Join(root, e.Name()))
	}
}

// State is what set-up finds on disk for one requirements file.
type State struct {
	Requirements string // the pinned requirements file
	Hash         string // its content hash, which names the venv
	Venv         string // the venv's folder
	Python       string // the venv's python
	// Ready: the venv is complete for exactly these requirements.
	Ready bool
	// Stale lists venvs built for other requirements (an older or newer
	// Atelier's): with Ready false, the requirements changed with an upgrade.
	Stale []string
	// Partial: a venv for these requirements was begun and not finished.
	Partial bool
}

// Inspect reports the venv's state for the requirements file.
func Inspect(l Layout, requirements string) (State, error) {
	b, err := os.ReadFile(requirements)
	if err != nil {
		return State{}, fmt.Errorf("read the worker's requirements: %w", err)
	}
	sum := sha256.Sum256(b)
	hash := hex.EncodeToString(sum[:])[:12]
	venv := filepath.Join(l.VenvRoot(), hash)
	st := State{Requirements: requirements, Hash: hash, Venv: venv, Python: venvPython(venv)}
	if marker, err := os.ReadFile(filepath.Join(venv, readyFile)); err == nil && strings.HasPrefix(string(marker), hash) {
		if _, err := os.Stat(st.Python); err == nil {
			st.Ready = true
		}
	}
	if !st.Ready {
		if _, err := os.Stat(venv); err == nil {
			st.Partial = true
		}
	}
	entries, err := os.ReadDir(l.VenvRoot())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return st, err
	}
	for _, e := range entries {
		if e.IsDir() && e.Name() != hash && !strings.HasPrefix(e.Name(), ".") {
			st.Stale = append(st.Stale, filepath.Join(l.VenvRoot(), e.Name()))
		}
	}
	return st, nil
}

func venvPython(venv string) string {
	return filepath.Join(venv, "bin", "python")
}

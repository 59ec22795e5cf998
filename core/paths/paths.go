// Package paths lays out Atelier's folders: the XDG base directories, or one
// root under $ATELIER_HOME.
package paths

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/adrg/xdg"
)

// HomeEnv names the variable that puts every Atelier folder under one root, so
// that tests and scripts never touch the user's real history.
const HomeEnv = "ATELIER_HOME"

// appDir is the subfolder Atelier owns inside each XDG base directory.
const appDir = "atelier"

// Paths are the folders and files Atelier reads and writes.
type Paths struct {
	Data   string // durable user data: the database, images, models
	Cache  string // safe to delete: thumbnails, previews, the worker's scratch
	Config string // settings files
	DB     string // the SQLite history
	Images string // generated PNGs, in one folder per day
	Models string // downloaded or imported models
}

// DefaultPaths returns the folders for this user: $ATELIER_HOME/{data,cache,config}
// when that variable is set, the XDG base directories otherwise.
func DefaultPaths() Paths {
	if home := os.Getenv(HomeEnv); home != "" {
		return PathsUnder(home)
	}
	return pathsFrom(
		filepath.Join(xdg.DataHome, appDir),
		filepath.Join(xdg.CacheHome, appDir),
		filepath.Join(xdg.ConfigHome, appDir),
	)
}

// PathsUnder lays every folder out below one root, as ATELIER_HOME does.
func PathsUnder(root string) Paths {
	if abs, err := filepath.Abs(root); err == nil {
		// The worker runs in another working directory, so paths handed to it
		// must not be relative.
		root = abs
	}
	return pathsFrom(
		filepath.Join(root, "data"),
		filepath.Join(root, "cache"),
		filepath.Join(root, "config"),
	)
}

func pathsFrom(data, cache, config string) Paths {
	return Paths{
		Data:   data,
		Cache:  cache,
		Config: config,
		DB:     filepath.Join(data, "atelier.db"),
		Images: filepath.Join(data, "images"),
		Models: filepath.Join(data, "models"),
	}
}

// EnsureDirs creates every folder (not the database file) if it is missing.
func (p Paths) EnsureDirs() error {
	for _, dir := range []string{p.Data, p.Cache, p.Config, p.Images, p.Models, filepath.Dir(p.DB)} {
		if dir == "" {
			return fmt.Errorf("create folders: an empty path in %+v", p)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create folder %s: %w (check its permissions, or set %s to a writable folder)", dir, err, HomeEnv)
		}
	}
	return nil
}

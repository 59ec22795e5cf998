//go:build linux || darwin

package setup

import (
	"fmt"
	"os"
	"syscall"
)

// freeBytes is the space an unprivileged user may still write at dir.
func freeBytes(dir string) (int64, bool) {
	var s syscall.Statfs_t
	if err := syscall.Statfs(dir, &s); err != nil {
		return 0, false
	}
	return int64(s.Bavail) * int64(s.Bsize), true //nolint:unconvert // the field types differ between systems
}

// lock takes an exclusive lock on path, or fails at once if another process
// holds it.
func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w (%s is locked)", errLocked, path)
	}
	return func() { f.Close() }, nil
}

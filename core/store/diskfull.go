package store

import (
	"errors"
	"syscall"

	"github.com/mattn/go-sqlite3"
)

// IsDiskFull reports whether err says that the disk, or the user's quota on
// it, is full: SQLite's SQLITE_FULL, or the system's own error.
func IsDiskFull(err error) bool {
	var se sqlite3.Error
	if errors.As(err, &se) && (se.Code == sqlite3.ErrFull || diskFullErrno(se.SystemErrno)) {
		return true
	}
	var errno syscall.Errno
	return errors.As(err, &errno) && diskFullErrno(errno)
}

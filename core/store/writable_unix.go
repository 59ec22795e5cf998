//go:build unix

package store

import "syscall"

// probeWrite asks the kernel whether this process may write path, the way an
// open for writing would be judged: a folder made read-only, a read-only file
// system, and root's exemption from file modes all answer as they would for
// SQLite.
func probeWrite(path string) error {
	const wOK = 0x2 // W_OK
	return syscall.Access(path, wOK)
}

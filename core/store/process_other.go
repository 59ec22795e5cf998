//go:build !unix

package store

import "os"

// processAlive cannot probe other processes here, so it never declares one
// dead: a job is better left shown as running than a live one interrupted.
func processAlive(pid int, start int64) bool { return pid > 0 }

func selfProcess() (int, int64) { return os.Getpid(), 0 }

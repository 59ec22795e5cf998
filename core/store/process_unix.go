//go:build unix

package store

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// processAlive reports whether the process that owned a job still runs. When
// in doubt it says yes: marking the job of a live process interrupted would be
// worse than leaving a dead job shown as running.
func processAlive(pid int, start int64) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	state, gotStart, ok := procStat(pid)
	if !ok {
		return true // no /proc (macOS, BSD): the signal probe is all we have
	}
	if state == "Z" || state == "X" {
		return false // exited, not yet reaped by its parent
	}
	// A different start time means the pid was reused by another process.
	return start == 0 || gotStart == start
}

var self struct {
	once  sync.Once
	pid   int
	start int64
}

// selfProcess identifies this process for the jobs it owns.
func selfProcess() (int, int64) {
	self.once.Do(func() {
		self.pid = os.Getpid()
		if _, start, ok := procStat(self.pid); ok {
			self.start = start
		}
	})
	return self.pid, self.start
}

// procStat reads a process's state and start time (in clock ticks since boot)
// from /proc/<pid>/stat on Linux.
func procStat(pid int) (state string, start int64, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, false
	}
	// The command name (field 2) may hold spaces and parentheses: the fields
	// we want come after its last closing parenthesis.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", 0, false
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); field 22 (starttime) is f[19].
	if len(f) < 20 {
		return "", 0, false
	}
	start, err = strconv.ParseInt(f[19], 10, 64)
	if err != nil {
		return "", 0, false
	}
	return f[0], start, true
}

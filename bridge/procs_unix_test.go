//go:build unix

package bridge

import (
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// requireGone checks that process pid no longer exists: it was reaped, not left as an
// orphan or a zombie.
func requireGone(t *testing.T, pid int) {
	t.Helper()
	if pid <= 0 {
		return
	}
	err := syscall.Kill(pid, 0)
	require.True(t, errors.Is(err, syscall.ESRCH), "worker process %d still exists (kill -0: %v)", pid, err)
}

// killHard kills pid with SIGKILL, as the kernel's OOM killer or a user would.
func killHard(t *testing.T, pid int) {
	t.Helper()
	require.NotZero(t, pid)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
}

// waitGone waits until pid exited and was reaped.
func waitGone(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	requireGone(t, pid)
}

//go:build !unix

package bridge

import (
	"testing"
	"time"
)

func requireGone(t *testing.T, pid int) {}

func killHard(t *testing.T, pid int) { t.Skip("killing a process by pid is Unix-only in these tests") }

func waitGone(t *testing.T, pid int, timeout time.Duration) {}

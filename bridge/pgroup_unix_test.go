//go:build unix

package bridge

import (
	"context"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRealWorkerHasItsOwnProcessGroup: a terminal's Ctrl-C goes to the whole
// foreground process group, so a worker in Atelier's group would die of it and the job
// would end as a crash instead of a cancel.
func TestRealWorkerHasItsOwnProcessGroup(t *testing.T) {
	b := newRealBridge(t)
	ctx, cancel := context.WithTimeout(context.Background(), realTimeout)
	defer cancel()
	require.NoError(t, b.Start(ctx))
	pid := b.pid()
	require.NotZero(t, pid)
	pgid, err := syscall.Getpgid(pid)
	require.NoError(t, err)
	assert.NotEqual(t, syscall.Getpgrp(), pgid, "the worker must not share Atelier's process group")
	assert.Equal(t, pid, pgid, "the worker leads a process group of its own")
}

package jobs

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// hang is a generous upper bound that only catches a watcher that never acts.
const hang = time.Minute

func TestWatchCancelCancelsOnceTheHistoryAsks(t *testing.T) {
	jctx, jcancel := context.WithCancelCause(context.Background())
	defer jcancel(nil)
	var asked, polls atomic.Int32
	stop := watchCancel(context.Background(), time.Millisecond, ErrQueueStopped, func() (bool, error) {
		polls.Add(1)
		return asked.Load() == 1, nil
	}, jcancel)
	defer stop()
	require.Eventually(t, func() bool { return polls.Load() >= 3 }, hang, time.Millisecond)
	require.NoError(t, jctx.Err(), "no cancel before one is asked")
	asked.Store(1)
	select {
	case <-jctx.Done():
	case <-time.After(hang):
		t.Fatal("the asked cancel never reached the job")
	}
	require.ErrorIs(t, context.Cause(jctx), context.Canceled)
}

func TestWatchCancelGivesTheStopCauseWhenItsContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	jctx, jcancel := context.WithCancelCause(context.Background())
	defer jcancel(nil)
	stopCause := errors.New("taken over")
	stop := watchCancel(ctx, time.Hour, stopCause, func() (bool, error) { return false, nil }, jcancel)
	defer stop()
	cancel()
	select {
	case <-jctx.Done():
	case <-time.After(hang):
		t.Fatal("the stop never reached the job")
	}
	require.ErrorIs(t, context.Cause(jctx), stopCause)
}

func TestWatchCancelStoppedNeverCancels(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	jctx, jcancel := context.WithCancelCause(context.Background())
	defer jcancel(nil)
	var polls atomic.Int32
	stop := watchCancel(ctx, time.Millisecond, ErrQueueStopped, func() (bool, error) {
		polls.Add(1)
		return false, errors.New("database is locked") // an error is not a cancel
	}, jcancel)
	require.Eventually(t, func() bool { return polls.Load() >= 2 }, hang, time.Millisecond)
	stop()
	stop() // twice is harmless
	cancel()
	n := polls.Load()
	require.NoError(t, jctx.Err(), "after stop returns, neither the context's end nor a poll cancels")
	require.Equal(t, n, polls.Load(), "stop waited for the watcher to return")
}

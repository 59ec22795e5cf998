package ui

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestProgressText(t *testing.T) {
	cases := []struct {
		p    progressSnapshot
		d    time.Duration
		want string
	}{
		{progressSnapshot{}, 300 * time.Millisecond, "Starting · 0.3 s"},
		{progressSnapshot{Note: "importing torch"}, 2 * time.Second, "Starting worker — importing torch · 2.0 s"},
		{progressSnapshot{Stage: "loading_model"}, 1500 * time.Millisecond, "Loading model · 1.5 s"},
		{progressSnapshot{Stage: "denoising", Step: 12, Total: 30}, 3400 * time.Millisecond, "Denoising — 12/30 · 3.4 s"},
		{progressSnapshot{Stage: "something_new", Step: 1, Total: 2}, 0, "Something_new — 1/2 · 0.0 s"},
		{progressSnapshot{Stage: "decoding"}, 95 * time.Second, "Decoding · 1 min 35 s"},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, progressText(c.p, c.d))
	}
}

func TestThrottleCoalescesAndShowsTheLastState(t *testing.T) {
	th := newThrottle(20 * time.Millisecond)
	done := make(chan struct{})
	var calls, last, seen atomic.Int64
	go th.run(done, 0, func() { calls.Add(1); seen.Store(last.Load()) })

	start := time.Now()
	for i := int64(1); i <= 100000; i++ {
		last.Store(i)
		th.Kick()
	}
	sent := time.Since(start)
	// The final kick must still be drawn, whatever the timing.
	deadline := time.Now().Add(5 * time.Second)
	for seen.Load() != 100000 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	close(done)
	assert.Equal(t, int64(100000), seen.Load(), "the last state is shown")
	// One call per interval at most, plus the trailing one: never one per kick.
	maxCalls := int64(sent/(20*time.Millisecond)) + int64(time.Since(start)/(20*time.Millisecond)) + 2
	assert.LessOrEqual(t, calls.Load(), maxCalls)
	assert.Less(t, calls.Load(), int64(100000))
}

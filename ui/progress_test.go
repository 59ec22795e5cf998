package ui

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/spec"
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
		{progressSnapshot{Stage: "denoising", Step: 3, Total: 30, Optimizing: "1024×1024"}, 2 * time.Second,
			"Denoising — 3/30 · 2.0 s · optimizing for 1024×1024: later images will be faster"},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, progressText(c.p, c.d))
	}
}

// The worker's optimizing notice lasts through the job's denoising, and the next job
// starts without it.
func TestOptimizingNoticeLastsTheJob(t *testing.T) {
	j := newJobRun(request.Request{Width: 1216, Height: 832}, func() {})
	j.onEvent(event{kind: evProgress, stage: "encoding"})
	j.onEvent(event{kind: evProgress, stage: spec.StageOptimizing})
	j.onEvent(event{kind: evProgress, stage: "denoising", step: 5, total: 30})
	p, _ := j.take()
	assert.Equal(t, "denoising", p.Stage)
	assert.Equal(t, 5, p.Step)
	assert.Equal(t, "1216×832", p.Optimizing)
	assert.Contains(t, progressText(p, time.Second), "optimizing for 1216×832: later images will be faster")
	j.onEvent(event{kind: evJob, step: 2, total: 2})
	p, _ = j.take()
	assert.Empty(t, p.Optimizing)
}

// The worker's reason why a size gets no fast path (on the optimizing notice, from
// the protocol line) shows beside the job instead of "optimizing", and the next job
// starts without it.
func TestNoFastPathNoteShowsBesideTheJob(t *testing.T) {
	line := `{"type":"progress","id":"j1","stage":"optimizing","step":0,"total":0,"elapsed_s":1,` +
		`"note":"not enough free GPU memory to optimize for 1024×1024: needs about 15.6 GB, 6.0 GB free; jobs run on the regular path"}`
	m, err := protocol.Decode([]byte(line))
	require.NoError(t, err)
	j := newJobRun(request.Request{Width: 1024, Height: 1024}, func() {})
	j.onEvent(eventOf(m))
	j.onEvent(event{kind: evProgress, stage: "denoising", step: 5, total: 30})
	p, _ := j.take()
	assert.Empty(t, p.Optimizing, "nothing is being optimized")
	text := progressText(p, time.Second)
	assert.Contains(t, text, "Denoising — 5/30")
	assert.Contains(t, text, "not enough free GPU memory to optimize for 1024×1024: needs about 15.6 GB, 6.0 GB free")
	assert.NotContains(t, text, "later images will be faster")
	j.onEvent(event{kind: evJob, step: 2, total: 2})
	p, _ = j.take()
	assert.Empty(t, p.NoFastPath)
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

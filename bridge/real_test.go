package bridge

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/protocol"
	"atelier/core/request"
)

// Tests against the real Python worker with the generated tiny model. The worker's
// first start imports torch (seconds) and its first job creates the tiny model, so
// the timeouts are generous; nothing here asserts speed.

const realTimeout = 10 * time.Minute

// realCacheDir is shared by the real-worker tests, so the tiny model is created once.
var realCacheDir string

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "atelier-bridge-test-cache-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	realCacheDir = dir
	return m.Run()
}

func newRealBridge(t *testing.T, edit ...func(*Config)) *Bridge {
	t.Helper()
	python, dir := os.Getenv(EnvPython), os.Getenv(EnvWorkerDir)
	if python == "" || dir == "" {
		t.Fatalf("the real-worker tests need %s and %s: run them with `make test` (or `make test-go`), which sets both to the venv's python and the repository's python folder", EnvPython, EnvWorkerDir)
	}
	cfg := Config{Python: python, WorkerDir: dir, CacheDir: realCacheDir, Logger: testLogger(t)}
	for _, e := range edit {
		e(&cfg)
	}
	b := New(cfg)
	t.Cleanup(func() {
		pids := b.allPIDs()
		require.NoError(t, b.Close())
		for _, pid := range pids {
			requireGone(t, pid)
		}
	})
	return b
}

func realRequest(t *testing.T, steps int) request.Request {
	return request.Request{Prompt: "a lighthouse at dusk", NegativePrompt: "fog", Model: request.TinyModel, Scheduler: "euler",
		Steps: steps, CFG: 5, Width: 64, Height: 64, Seed: 7, BatchSize: 1, OutputDir: t.TempDir(), PreviewEvery: 1}
}

func TestRealGenerate(t *testing.T) {
	b := newRealBridge(t)
	ctx, cancel := context.WithTimeout(context.Background(), realTimeout)
	defer cancel()
	require.NoError(t, b.Start(ctx))
	hello, ok := b.Hello()
	require.True(t, ok)
	assert.Equal(t, protocol.ProtocolVersion, hello.Protocol)
	assert.Contains(t, protocol.DeviceKinds, hello.Device)
	assert.NotEmpty(t, hello.Capabilities.Schedulers)
	require.NoError(t, b.Ping(ctx))

	req := realRequest(t, 3)
	final, msgs := runJob(t, b, "real-1", req)
	requireResult(t, final, req)
	assert.Equal(t, protocol.MsgAccepted, msgs[0].Type)
	var denoise int
	for _, m := range msgs {
		if m.Type == protocol.MsgProgress && m.Stage == "denoising" {
			denoise++
			assert.Equal(t, 3, m.Total)
		}
	}
	assert.Positive(t, denoise, "progress streams while denoising: %v", types(msgs))
	assert.Equal(t, req.Seed, final.Images[0].Seed)
	require.NotNil(t, final.Metrics)
	assert.Positive(t, final.Metrics.TotalS)
}

func TestRealCancel(t *testing.T) {
	b := newRealBridge(t)
	ctx, cancel := context.WithTimeout(context.Background(), realTimeout)
	defer cancel()
	jobCtx, cancelJob := context.WithCancel(ctx)
	defer cancelJob()
	// Many steps at a larger size, so that the job is still denoising when the cancel lands.
	req := realRequest(t, 150)
	req.Width, req.Height = 256, 256
	ch, err := b.Submit(jobCtx, "real-cancel", req)
	require.NoError(t, err)
	var msgs []seen
	for msg := range ch {
		m := seenOf(msg)
		msgs = append(msgs, m)
		if m.Type == protocol.MsgProgress && m.Stage == "denoising" {
			cancelJob()
		}
	}
	final := finalOf(t, "real-cancel", msgs)
	require.Equal(t, protocol.MsgError, final.Type, "%v", types(msgs))
	assert.Equal(t, failure.ErrCancelled, final.Code)

	// The worker honoured the cancel and runs the next job.
	pid := b.pid()
	next := realRequest(t, 2)
	final, _ = runJob(t, b, "real-after-cancel", next)
	requireResult(t, final, next)
	assert.Equal(t, pid, b.pid(), "the same worker ran it")
}

func TestRealKilledMidJob(t *testing.T) {
	b := newRealBridge(t)
	req := realRequest(t, 150)
	req.Width, req.Height = 256, 256
	ch, err := b.Submit(context.Background(), "real-kill", req)
	require.NoError(t, err)
	var msgs []seen
	pid := 0
	for msg := range ch {
		m := seenOf(msg)
		msgs = append(msgs, m)
		if m.Type == protocol.MsgProgress && m.Stage == "denoising" && pid == 0 {
			pid = b.pid()
			killHard(t, pid)
		}
	}
	final := finalOf(t, "real-kill", msgs)
	require.Equal(t, protocol.MsgError, final.Type, "%v", types(msgs))
	assert.Equal(t, failure.ErrWorkerCrashed, final.Code)
	assert.Contains(t, final.Message, "killed")
	assert.Contains(t, final.Message, "next job starts a new worker")
	assert.NotContains(t, final.Detail, "wrote nothing to stderr", "the detail holds the worker's stderr lines")
	assert.NotEmpty(t, b.StderrTail())
	requireGone(t, pid)

	next := realRequest(t, 2)
	final, _ = runJob(t, b, "real-after-kill", next)
	requireResult(t, final, next)
	assert.NotEqual(t, pid, b.pid())
}

func TestRealCloseLeavesNoProcess(t *testing.T) {
	b := newRealBridge(t)
	req := realRequest(t, 2)
	final, _ := runJob(t, b, "real-close", req)
	requireResult(t, final, req)
	pid := b.pid()
	require.NotZero(t, pid)
	require.NoError(t, b.Close())
	requireGone(t, pid)
	assert.Empty(t, childrenOf(t, os.Getpid()), "no worker process remains after Close")
}

// TestRealStoppedWorkerIsKilled stops the real worker mid-job with SIGSTOP, as a user's
// kill -STOP would, then runs a job whose one step outlasts the heartbeat deadline on a
// new worker: its heartbeats keep it alive.
func TestRealStoppedWorkerIsKilled(t *testing.T) {
	const deadline = 5 * time.Second
	b := newRealBridge(t, func(c *Config) {
		c.HeartbeatTimeout = deadline
		// Beats 50 times a deadline; every step waits 8s after its progress.
		c.Env = append(c.Env, "ATELIER_HEARTBEAT_INTERVAL_S=0.1", "ATELIER_TEST_STEP_DELAY_S=8")
	})
	ch, err := b.Submit(context.Background(), "real-stop", realRequest(t, 150))
	require.NoError(t, err)
	var msgs []seen
	pid := 0
	for msg := range ch {
		m := seenOf(msg)
		msgs = append(msgs, m)
		if m.Type == protocol.MsgProgress && m.Stage == "denoising" && pid == 0 {
			pid = b.pid()
			require.NotZero(t, pid)
			require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
		}
	}
	final := finalOf(t, "real-stop", msgs)
	require.Equal(t, protocol.MsgError, final.Type, "%v", types(msgs))
	assert.Equal(t, failure.ErrWorkerCrashed, final.Code)
	assert.Contains(t, final.Message, "stopped responding")
	assert.Contains(t, final.Message, "next job starts a new worker")
	waitGone(t, pid, realTimeout)
	assert.Empty(t, childrenOf(t, os.Getpid()), "no worker process remains")

	next := realRequest(t, 1)
	final, _ = runJob(t, b, "real-after-stop", next)
	requireResult(t, final, next)
	assert.NotEqual(t, pid, b.pid(), "a new worker ran it")
}

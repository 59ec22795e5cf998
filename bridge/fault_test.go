package bridge

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/protocol"
)

// Fault injection with the fake worker. Each test meets one fault, checks the error the
// caller sees, then runs a healthy job on the same Bridge to show that it recovers.

const jobTimeout = 2 * time.Minute

func TestFakeJobStreamsToResult(t *testing.T) {
	fb := newFakeBridge(t, "mode=healthy")
	_, ok := fb.Hello()
	assert.False(t, ok, "no hello before the first start")

	req := tinyRequest(t, 3)
	req.BatchSize = 2
	final, msgs := runJob(t, fb.Bridge, "job-1", req)
	requireResult(t, final, req)
	assert.Equal(t, protocol.MsgAccepted, msgs[0].Type, "accepted comes first: %v", types(msgs))
	assert.Equal(t, 3, countType(msgs, protocol.MsgPreview))
	var steps []int
	for _, m := range msgs {
		if m.Type == protocol.MsgProgress && m.Stage == "denoising" {
			steps = append(steps, m.Step)
		}
	}
	assert.Equal(t, []int{1, 2, 3}, steps, "progress arrives in order")

	hello, ok := fb.Hello()
	require.True(t, ok)
	assert.Equal(t, protocol.ProtocolVersion, hello.Protocol)
	assert.Equal(t, "0.0.0-fake", hello.WorkerVersion)
	assert.Contains(t, strings.Join(fb.StderrTail(), "\n"), "[job-1] generating 3 steps")

	// The worker stays warm for the next job.
	pid := fb.pid()
	final, _ = runJob(t, fb.Bridge, "job-2", tinyRequest(t, 1))
	requireResult(t, final, tinyRequest(t, 1))
	assert.Equal(t, pid, fb.pid())
	assert.EqualValues(t, 1, fb.started())
}

func TestFakeCrashMidJob(t *testing.T) {
	fb := newFakeBridge(t, "mode=crash")
	final, msgs := runJob(t, fb.Bridge, "job-1", tinyRequest(t, 5))
	require.Equal(t, protocol.MsgError, final.Type, "%v", types(msgs))
	assert.Equal(t, failure.ErrWorkerCrashed, final.Code)
	assert.Contains(t, final.Message, "exit status 3")
	assert.Contains(t, final.Message, "next job starts a new worker", "the message says what to do")
	assert.Contains(t, final.Detail, "RuntimeError: fake worker crashed on purpose", "the detail holds the stderr tail")
	assert.Contains(t, final.Detail, "Traceback (most recent call last):")
	assert.GreaterOrEqual(t, countType(msgs, protocol.MsgProgress), 2, "the job had progressed before the crash")
	assert.Contains(t, fb.StderrTail(), "RuntimeError: fake worker crashed on purpose")
	assert.Zero(t, fb.pid(), "the dead worker is not reused")

	fb.setMode("mode=healthy")
	req := tinyRequest(t, 2)
	final, _ = runJob(t, fb.Bridge, "job-2", req)
	requireResult(t, final, req)
	assert.EqualValues(t, 2, fb.started())
}

func TestFakeUnreadableLineMidJob(t *testing.T) {
	for _, tt := range []struct{ mode, detail string }{
		{"garbage", `"this is not json"`},
		{"longline", "longer than the protocol's"},
		{"wrongdir", `"shutdown", which only Atelier sends`},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			fb := newFakeBridge(t, "mode="+tt.mode)
			final, msgs := runJob(t, fb.Bridge, "job-1", tinyRequest(t, 5))
			require.Equal(t, protocol.MsgError, final.Type, "%v", types(msgs))
			assert.Equal(t, failure.ErrInternal, final.Code)
			assert.Contains(t, final.Message, "The worker sent an unreadable line")
			assert.Contains(t, final.Message, "next job starts a new worker")
			assert.Contains(t, final.Detail, tt.detail)
			assert.Contains(t, final.Detail, "generating 5 steps", "the detail holds the stderr tail")

			fb.setMode("mode=healthy")
			req := tinyRequest(t, 2)
			final, _ = runJob(t, fb.Bridge, "job-2", req)
			requireResult(t, final, req)
			assert.EqualValues(t, 2, fb.started(), "a new worker ran the next job")
		})
	}
}

func TestFakeUnreadableLineAtStart(t *testing.T) {
	fb := newFakeBridge(t, "mode=garbagestart")
	_, err := fb.Submit(context.Background(), "job-1", tinyRequest(t, 2))
	je := asJobError(t, err)
	assert.Equal(t, failure.ErrInternal, je.Code)
	assert.Contains(t, je.Detail, "Loading checkpoint shards")

	fb.setMode("mode=healthy")
	req := tinyRequest(t, 2)
	final, _ := runJob(t, fb.Bridge, "job-2", req)
	requireResult(t, final, req)
}

func TestFakeHangAtStart(t *testing.T) {
	// Long enough for a loaded machine to start the fake and let it log its first line.
	fb := newFakeBridge(t, "mode=hang", func(c *Config) { c.StallTimeout = 5 * time.Second })
	_, err := fb.Submit(context.Background(), "job-1", tinyRequest(t, 2))
	je := asJobError(t, err)
	assert.Equal(t, failure.ErrInternal, je.Code)
	assert.Contains(t, je.Message, "said nothing for 5s while starting")
	assert.Contains(t, je.Detail, "fake: importing torch", "the detail holds the stderr tail")
	_, ok := fb.Hello()
	assert.False(t, ok)

	fb.setMode("mode=healthy")
	req := tinyRequest(t, 2)
	final, _ := runJob(t, fb.Bridge, "job-2", req)
	requireResult(t, final, req)
}

func TestFakeSlowStartWithinStallDeadline(t *testing.T) {
	// Loading lines for 3 stall periods in total, but never more than a fifth of one apart.
	fb := newFakeBridge(t, "mode=slowstart load=9s every=600ms", func(c *Config) { c.StallTimeout = 3 * time.Second })
	req := tinyRequest(t, 2)
	final, _ := runJob(t, fb.Bridge, "job-1", req)
	requireResult(t, final, req)
	assert.EqualValues(t, 1, fb.started())
}

func TestStartUpMessagesReachOnStarting(t *testing.T) {
	var mu sync.Mutex
	var told []string
	fb := newFakeBridge(t, "mode=slowstart load=300ms every=100ms", func(c *Config) {
		c.OnStarting = func(m string) {
			mu.Lock()
			told = append(told, m)
			mu.Unlock()
		}
	})
	req := tinyRequest(t, 2)
	final, _ := runJob(t, fb.Bridge, "job-1", req)
	requireResult(t, final, req)
	mu.Lock()
	got := append([]string(nil), told...)
	mu.Unlock()
	require.GreaterOrEqual(t, len(got), 2, "%q", got)
	assert.Equal(t, "launching Python", got[0], "told as the worker is spawned")
	assert.Equal(t, "importing torch (slowly)", got[1], "then each loading line")

	// A warm worker starts nothing: nothing more is told.
	final, _ = runJob(t, fb.Bridge, "job-2", req)
	requireResult(t, final, req)
	mu.Lock()
	defer mu.Unlock()
	assert.Len(t, told, len(got))
}

func TestFakeDiesAtStart(t *testing.T) {
	fb := newFakeBridge(t, "mode=diestart")
	_, err := fb.Submit(context.Background(), "job-1", tinyRequest(t, 2))
	je := asJobError(t, err)
	assert.Equal(t, failure.ErrWorkerCrashed, je.Code)
	assert.Contains(t, je.Message, "exit status 1")
	assert.Contains(t, je.Message, "make venv")
	assert.Contains(t, je.Detail, "ModuleNotFoundError: No module named 'torch'")

	fb.setMode("mode=healthy")
	req := tinyRequest(t, 2)
	final, _ := runJob(t, fb.Bridge, "job-2", req)
	requireResult(t, final, req)
}

func TestFakeWrongProtocol(t *testing.T) {
	fb := newFakeBridge(t, "mode=badproto protocol=2")
	_, err := fb.Submit(context.Background(), "job-1", tinyRequest(t, 2))
	je := asJobError(t, err)
	assert.Equal(t, failure.ErrUnsupported, je.Code)
	assert.Contains(t, je.Message, "protocol version 2")
	assert.Contains(t, je.Message, "this Atelier speaks version 1")
	assert.Contains(t, je.Message, "make run", "the message says what to do")
	_, ok := fb.Hello()
	assert.False(t, ok, "a refused worker's hello is not kept")

	fb.setMode("mode=healthy")
	req := tinyRequest(t, 2)
	final, _ := runJob(t, fb.Bridge, "job-2", req)
	requireResult(t, final, req)
	hello, ok := fb.Hello()
	require.True(t, ok)
	assert.Equal(t, protocol.ProtocolVersion, hello.Protocol)
}

func TestFakeCancelByContext(t *testing.T) {
	fb := newFakeBridge(t, "mode=healthy step=50ms")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := fb.Submit(ctx, "job-1", tinyRequest(t, 150))
	require.NoError(t, err)
	var msgs []seen
	for msg := range ch {
		m := seenOf(msg)
		msgs = append(msgs, m)
		if m.Type == protocol.MsgProgress && m.Stage == "denoising" {
			cancel()
		}
	}
	final := finalOf(t, "job-1", msgs)
	assert.Equal(t, protocol.MsgError, final.Type)
	assert.Equal(t, failure.ErrCancelled, final.Code)
	assert.Less(t, countType(msgs, protocol.MsgProgress), 150, "the job stopped early")

	// The worker honoured the cancel, so it stays and runs the next job.
	pid := fb.pid()
	require.NotZero(t, pid)
	req := tinyRequest(t, 2)
	final, _ = runJob(t, fb.Bridge, "job-2", req)
	requireResult(t, final, req)
	assert.Equal(t, pid, fb.pid())
}

func TestFakeCancelByID(t *testing.T) {
	fb := newFakeBridge(t, "mode=healthy step=50ms")
	ch, err := fb.Submit(context.Background(), "job-1", tinyRequest(t, 150))
	require.NoError(t, err)
	var msgs []seen
	for msg := range ch {
		m := seenOf(msg)
		msgs = append(msgs, m)
		if m.Type == protocol.MsgAccepted {
			require.NoError(t, fb.Cancel("job-1"))
			require.NoError(t, fb.Cancel("job-1"), "a second cancel is harmless")
		}
	}
	final := finalOf(t, "job-1", msgs)
	assert.Equal(t, failure.ErrCancelled, final.Code)
	assert.ErrorIs(t, fb.Cancel("job-1"), ErrNoSuchJob, "the job has ended")
	assert.ErrorIs(t, fb.Cancel("nope"), ErrNoSuchJob)
}

func TestFakeCancelGraceKillsStubbornWorker(t *testing.T) {
	fb := newFakeBridge(t, "mode=stubborn", func(c *Config) { c.CancelGrace = 500 * time.Millisecond })
	ch, err := fb.Submit(context.Background(), "job-1", tinyRequest(t, 5))
	require.NoError(t, err)
	var msgs []seen
	pid := 0
	for msg := range ch {
		m := seenOf(msg)
		msgs = append(msgs, m)
		if m.Type == protocol.MsgProgress && m.Stage == "denoising" && pid == 0 {
			pid = fb.pid()
			require.NoError(t, fb.Cancel("job-1"))
		}
	}
	final := finalOf(t, "job-1", msgs)
	assert.Equal(t, failure.ErrCancelled, final.Code)
	assert.Contains(t, final.Message, "did not stop within 500ms")
	waitGone(t, pid, 30*time.Second)

	fb.setMode("mode=healthy")
	req := tinyRequest(t, 2)
	final, _ = runJob(t, fb.Bridge, "job-2", req)
	requireResult(t, final, req)
}

func TestFakeKilledWhileIdle(t *testing.T) {
	fb := newFakeBridge(t, "mode=healthy")
	req := tinyRequest(t, 1)
	final, _ := runJob(t, fb.Bridge, "job-1", req)
	requireResult(t, final, req)
	pid := fb.pid()
	killHard(t, pid)
	waitGone(t, pid, 30*time.Second)

	final, _ = runJob(t, fb.Bridge, "job-2", req)
	requireResult(t, final, req)
	assert.NotEqual(t, pid, fb.pid())
}

func TestFakeOneJobAtATime(t *testing.T) {
	fb := newFakeBridge(t, "mode=healthy step=20ms")
	ch, err := fb.Submit(context.Background(), "job-1", tinyRequest(t, 20))
	require.NoError(t, err)
	_, err = fb.Submit(context.Background(), "job-2", tinyRequest(t, 1))
	je := asJobError(t, err)
	assert.Equal(t, failure.ErrUnsupported, je.Code)
	assert.Contains(t, je.Message, "job-1 is still running")
	final := finalOf(t, "job-1", collect(t, ch, jobTimeout))
	assert.Equal(t, protocol.MsgResult, final.Type)

	final, _ = runJob(t, fb.Bridge, "job-2", tinyRequest(t, 1))
	assert.Equal(t, protocol.MsgResult, final.Type, "the slot is free once the job ended")
}

func TestFakeInvalidRequestStartsNothing(t *testing.T) {
	fb := newFakeBridge(t, "mode=healthy")
	req := tinyRequest(t, 2)
	req.Seed = -1
	_, err := fb.Submit(context.Background(), "job-1", req)
	je := asJobError(t, err)
	assert.Equal(t, failure.ErrInvalidRequest, je.Code)
	assert.Equal(t, "seed", je.Field)

	req = tinyRequest(t, 2)
	req.OutputDir = "relative/out"
	je = asJobError(t, func() error { _, err := fb.Submit(context.Background(), "job-1", req); return err }())
	assert.Equal(t, "output_dir", je.Field)

	je = asJobError(t, func() error { _, err := fb.Submit(context.Background(), "job 1", tinyRequest(t, 2)); return err }())
	assert.Equal(t, failure.ErrInvalidRequest, je.Code)
	assert.Equal(t, "id", je.Field)
	assert.Zero(t, fb.started(), "no worker started for invalid requests")
}

func TestFakeCancelWhileStartingKeepsTheStart(t *testing.T) {
	fb := newFakeBridge(t, "mode=slowstart load=1s every=100ms")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := fb.Submit(ctx, "job-1", tinyRequest(t, 2))
	je := asJobError(t, err)
	assert.Equal(t, failure.ErrCancelled, je.Code)

	// The start went on without the cancelled job; the next job uses that worker.
	req := tinyRequest(t, 2)
	final, _ := runJob(t, fb.Bridge, "job-2", req)
	requireResult(t, final, req)
	assert.EqualValues(t, 1, fb.started())
}

func TestFakePing(t *testing.T) {
	fb := newFakeBridge(t, "mode=healthy step=20ms")
	ctx, cancel := context.WithTimeout(context.Background(), jobTimeout)
	defer cancel()
	require.NoError(t, fb.Ping(ctx), "Ping starts the worker")
	ch, err := fb.Submit(ctx, "job-1", tinyRequest(t, 30))
	require.NoError(t, err)
	require.NoError(t, fb.Ping(ctx), "the worker answers mid-job")
	final := finalOf(t, "job-1", collect(t, ch, jobTimeout))
	assert.Equal(t, protocol.MsgResult, final.Type)
	assert.EqualValues(t, 1, fb.started())
}

func TestFakeWorkerEnvironment(t *testing.T) {
	envFile := filepath.Join(t.TempDir(), "env")
	cache := t.TempDir()
	fb := newFakeBridge(t, "mode=healthy env="+envFile, func(c *Config) {
		c.WorkerDir = "/opt/atelier/python"
		c.CacheDir = cache
		c.Env = append(c.Env, "FAKE_EXTRA=1", "HF_HUB_OFFLINE=1")
	})
	require.NoError(t, fb.Start(context.Background()))
	f, err := os.Open(envFile)
	require.NoError(t, err)
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		env[k] = v
	}
	assert.Equal(t, map[string]string{"PYTHONPATH": "/opt/atelier/python", "PYTHONUNBUFFERED": "1",
		"ATELIER_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1", "FAKE_EXTRA": "1",
		"ATELIER_PARENT_PID": strconv.Itoa(os.Getpid())}, env)
}

func TestFakeCloseMidJob(t *testing.T) {
	fb := newFakeBridge(t, "mode=healthy step=50ms")
	ch, err := fb.Submit(context.Background(), "job-1", tinyRequest(t, 150))
	require.NoError(t, err)
	m := seenOf(<-ch)
	require.Equal(t, protocol.MsgAccepted, m.Type)
	pid := fb.pid()
	require.NoError(t, fb.Close())
	requireGone(t, pid)
	final := finalOf(t, "job-1", append([]seen{m}, collect(t, ch, jobTimeout)...))
	assert.Equal(t, failure.ErrCancelled, final.Code)
	assert.Contains(t, final.Message, "Atelier closed")

	_, err = fb.Submit(context.Background(), "job-2", tinyRequest(t, 1))
	assert.Equal(t, failure.ErrCancelled, asJobError(t, err).Code, "a closed bridge runs nothing")
	require.NoError(t, fb.Close(), "Close twice is fine")
}

func TestFakeCloseKillsWorkerThatIgnoresStdin(t *testing.T) {
	// Time enough for the fake to log that it stays; it never exits, so the kill is tested.
	fb := newFakeBridge(t, "mode=deaf", func(c *Config) { c.ExitGrace = 3 * time.Second })
	require.NoError(t, fb.Start(context.Background()))
	pid := fb.pid()
	require.NotZero(t, pid)
	require.NoError(t, fb.Close())
	requireGone(t, pid)
	assert.Contains(t, fb.StderrTail(), "fake: stdin closed, but I stay", "Close closed stdin first")
}

func TestFakeCloseWhileStarting(t *testing.T) {
	fb := newFakeBridge(t, "mode=hang")
	errc := make(chan error, 1)
	go func() {
		_, err := fb.Submit(context.Background(), "job-1", tinyRequest(t, 1))
		errc <- err
	}()
	require.Eventually(t, func() bool { return len(fb.allPIDs()) == 1 }, jobTimeout, 10*time.Millisecond)
	pids := fb.allPIDs()
	require.NoError(t, fb.Close())
	requireGone(t, pids[0])
	je := asJobError(t, <-errc)
	assert.Equal(t, failure.ErrCancelled, je.Code)
}

func TestFakeBackoffResetsAfterSuccess(t *testing.T) {
	fb := newFakeBridge(t, "mode=crash")
	for i := range 2 {
		final, _ := runJob(t, fb.Bridge, "crash-"+string(rune('a'+i)), tinyRequest(t, 5))
		require.Equal(t, failure.ErrWorkerCrashed, final.Code)
	}
	fb.mu.Lock()
	assert.Equal(t, 2, fb.failures)
	assert.False(t, fb.notBefore.IsZero())
	fb.mu.Unlock()

	fb.setMode("mode=healthy")
	req := tinyRequest(t, 1)
	final, _ := runJob(t, fb.Bridge, "job-ok", req)
	requireResult(t, final, req)
	fb.mu.Lock()
	assert.Zero(t, fb.failures, "a job that ended normally resets the backoff")
	fb.mu.Unlock()
}

func TestBackoffDelay(t *testing.T) {
	top := func(n int64) int64 { return n - 1 }
	bottom := func(int64) int64 { return 0 }
	const lo, hi = 100 * time.Millisecond, time.Second
	assert.Zero(t, backoffDelay(0, lo, hi, top))
	for _, tt := range []struct {
		failures int
		full     time.Duration
	}{{1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {3, 400 * time.Millisecond}, {4, 800 * time.Millisecond}, {5, time.Second}, {50, time.Second}} {
		assert.Equal(t, tt.full, backoffDelay(tt.failures, lo, hi, top), "failures %d, most jitter", tt.failures)
		assert.Equal(t, tt.full/2, backoffDelay(tt.failures, lo, hi, bottom), "failures %d, least jitter", tt.failures)
	}
}

func TestReadLine(t *testing.T) {
	long := strings.Repeat("x", 100)
	r := bufio.NewReaderSize(strings.NewReader("a\r\nbb\n\n"+long+"\nlast"), 16)
	for _, want := range []struct {
		line    string
		tooLong bool
		err     error
	}{{"a", false, nil}, {"bb", false, nil}, {"", false, nil}, {long[:50], true, nil}, {"last", false, io.EOF}} {
		line, tooLong, err := readLine(r, 50)
		if want.tooLong {
			assert.True(t, tooLong)
			assert.NotEmpty(t, line)
			assert.LessOrEqual(t, len(line), 50)
			assert.True(t, strings.HasPrefix(long, string(line)), "the start of the long line is kept")
			continue
		}
		assert.Equal(t, want.line, string(line))
		assert.False(t, tooLong)
		assert.True(t, errors.Is(err, want.err), "err %v", err)
	}
	_, _, err := readLine(r, 50)
	assert.ErrorIs(t, err, io.EOF)
}

func TestRing(t *testing.T) {
	r := newRing(3)
	assert.Empty(t, r.snapshot())
	r.add("a")
	r.add("b")
	assert.Equal(t, []string{"a", "b"}, r.snapshot())
	r.add("c")
	r.add("d")
	assert.Equal(t, []string{"b", "c", "d"}, r.snapshot())
}

func TestWorkerCommand(t *testing.T) {
	oldPy, oldDir := DefaultPython, DefaultWorkerDir
	t.Cleanup(func() { DefaultPython, DefaultWorkerDir = oldPy, oldDir })
	DefaultPython, DefaultWorkerDir = "", ""
	t.Setenv(EnvPython, "")
	t.Setenv(EnvWorkerDir, "")

	_, _, err := Config{}.WorkerCommand()
	je := asJobError(t, err)
	assert.Contains(t, je.Message, "make run")
	assert.Contains(t, je.Message, "make venv")

	// A python and a worker folder that exist.
	dir := t.TempDir()
	python := filepath.Join(dir, "python3")
	require.NoError(t, os.WriteFile(python, nil, 0o755))
	workerDir := filepath.Join(dir, "py")
	require.NoError(t, os.MkdirAll(filepath.Join(workerDir, "atelier_worker"), 0o755))

	DefaultPython, DefaultWorkerDir = python, workerDir
	argv, wd, err := Config{Args: []string{"--verbose"}}.WorkerCommand()
	require.NoError(t, err)
	assert.Equal(t, []string{python, "-m", "atelier_worker", "--verbose"}, argv)
	assert.Equal(t, workerDir, wd)
	// The Ray proxy is another module of the same package and venv.
	argv, _, err = Config{Module: "atelier_worker.ray_proxy", Args: []string{"--address", "h:1"}}.WorkerCommand()
	require.NoError(t, err)
	assert.Equal(t, []string{python, "-m", "atelier_worker.ray_proxy", "--address", "h:1"}, argv)

	// The environment overrides the build's defaults, and Config the environment.
	t.Setenv(EnvPython, filepath.Join(dir, "missing-python"))
	_, _, err = Config{}.WorkerCommand()
	je = asJobError(t, err)
	assert.Contains(t, je.Message, "missing-python")
	assert.Contains(t, je.Message, "make venv")
	argv, _, err = Config{Python: python}.WorkerCommand()
	require.NoError(t, err)
	assert.Equal(t, python, argv[0])

	t.Setenv(EnvWorkerDir, dir)
	_, _, err = Config{Python: python}.WorkerCommand()
	assert.Contains(t, asJobError(t, err).Message, "worker's code is not in")

	argv, _, err = Config{Command: []string{"/bin/fake", "x"}, Args: []string{"y"}}.WorkerCommand()
	require.NoError(t, err)
	assert.Equal(t, []string{"/bin/fake", "x", "y"}, argv)

	// Starting with no worker configured fails with the same advice, as a JobError.
	t.Setenv(EnvPython, "")
	t.Setenv(EnvWorkerDir, "")
	DefaultPython, DefaultWorkerDir = "", ""
	b := New(Config{Logger: testLogger(t)})
	defer b.Close()
	for range 2 {
		_, err = b.Submit(context.Background(), "job-1", tinyRequest(t, 1))
		assert.Contains(t, asJobError(t, err).Message, "make run")
	}
	b.mu.Lock()
	assert.Zero(t, b.failures, "a missing set-up is reported at once, without backoff")
	b.mu.Unlock()
}

func TestFakeFrozenWorkerIsKilledAndTheNextJobStartsANewOne(t *testing.T) {
	fb := newFakeBridge(t, "mode=freeze", func(c *Config) { c.HeartbeatTimeout = time.Second })
	ch, err := fb.Submit(context.Background(), "job-1", tinyRequest(t, 5))
	require.NoError(t, err)
	pid := fb.pid()
	// The bound only catches a hang; the deadline is a second.
	msgs := collect(t, ch, jobTimeout)
	final := finalOf(t, "job-1", msgs)
	require.Equal(t, protocol.MsgError, final.Type, "%v", types(msgs))
	assert.Equal(t, failure.ErrWorkerCrashed, final.Code)
	assert.Contains(t, final.Message, "stopped responding")
	assert.Contains(t, final.Message, "heard nothing from it for 1s")
	assert.Contains(t, final.Message, "next job starts a new worker", "the message says what to do")
	assert.Contains(t, final.Detail, "stopping myself", "the detail holds the stderr tail")
	assert.GreaterOrEqual(t, countType(msgs, protocol.MsgProgress), 2, "the job had progressed before it froze")
	waitGone(t, pid, jobTimeout)

	fb.setMode("mode=healthy")
	req := tinyRequest(t, 2)
	final, _ = runJob(t, fb.Bridge, "job-2", req)
	requireResult(t, final, req)
	assert.EqualValues(t, 2, fb.started(), "a new worker ran the next job")
}

func TestFakeStepLongerThanTheDeadlineLivesOnHeartbeats(t *testing.T) {
	// Two steps of 2s each, no progress in between: only the beats say the worker lives.
	fb := newFakeBridge(t, "mode=healthy step=2s beat=20ms", func(c *Config) { c.HeartbeatTimeout = time.Second })
	req := tinyRequest(t, 2)
	final, _ := runJob(t, fb.Bridge, "job-1", req)
	requireResult(t, final, req)
	assert.EqualValues(t, 1, fb.started())
}

func TestFakeWorkerWithoutHeartbeatsGetsNoDeadline(t *testing.T) {
	// An older worker, whose hello does not list heartbeat: a silent step is no freeze.
	fb := newFakeBridge(t, "mode=healthy step=2s nobeat=1", func(c *Config) { c.HeartbeatTimeout = 300 * time.Millisecond })
	req := tinyRequest(t, 2)
	final, _ := runJob(t, fb.Bridge, "job-1", req)
	requireResult(t, final, req)
	assert.EqualValues(t, 1, fb.started())
}

package bridge

import (
	"bytes"
	"context"
	"errors"
	"image/png"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/protocol"
	"atelier/core/request"
)

// testLogger sends the bridge's logs to the test's output, and drops those that come
// after the test ended (the testing package panics on them).
func testLogger(t *testing.T) *slog.Logger {
	w := &testLogWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testLogWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(bytes.TrimRight(p, "\n")))
	}
	return len(p), nil
}

// fakeBridge is a Bridge whose worker is the fake of fakeworker_test.go.
type fakeBridge struct {
	*Bridge
	t        *testing.T
	modeFile string
}

func newFakeBridge(t *testing.T, mode string, edit ...func(*Config)) *fakeBridge {
	t.Helper()
	logger := testLogger(t) // first, so that its cleanup runs after Close's
	dir := t.TempDir()
	exe, err := os.Executable()
	require.NoError(t, err)
	cfg := Config{
		Command:      []string{exe},
		Env:          []string{fakeModeEnv + "=" + filepath.Join(dir, "mode")},
		StallTimeout: 20 * time.Second,
		CancelGrace:  20 * time.Second,
		ExitGrace:    5 * time.Second,
		BackoffMin:   10 * time.Millisecond,
		BackoffMax:   100 * time.Millisecond,
		Logger:       logger,
	}
	for _, e := range edit {
		e(&cfg)
	}
	fb := &fakeBridge{Bridge: New(cfg), t: t, modeFile: filepath.Join(dir, "mode")}
	fb.setMode(mode)
	t.Cleanup(func() {
		pids := fb.allPIDs()
		require.NoError(t, fb.Close())
		for _, pid := range pids {
			requireGone(t, pid)
		}
	})
	return fb
}

// setMode chooses what the next fake worker process does.
func (fb *fakeBridge) setMode(mode string) {
	require.NoError(fb.t, os.WriteFile(fb.modeFile, []byte(mode), 0o644))
}

// pid is the process id of the ready worker, or 0.
func (b *Bridge) pid() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.w == nil {
		return 0
	}
	return b.w.pid()
}

func (b *Bridge) allPIDs() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	var pids []int
	for w := range b.workers {
		pids = append(pids, w.pid())
	}
	return pids
}

func (b *Bridge) started() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seq
}

func tinyRequest(t *testing.T, steps int) request.Request {
	return request.Request{Prompt: "a lighthouse", Model: request.TinyModel, Scheduler: "euler", Steps: steps, CFG: 5,
		Width: 64, Height: 64, Seed: 7, BatchSize: 1, OutputDir: t.TempDir(), PreviewEvery: 1}
}

// seen is a message as the tests look at it: its type and the fields the
// tests check, whichever message type carries them.
type seen struct {
	Type, ID, Stage, Path  string
	Step, Total            int
	Code                   failure.ErrorCode
	Message, Detail, Field string
	Images                 []protocol.ImageResult
	Metrics                *protocol.Metrics
}

func seenOf(m protocol.Message) seen {
	v := seen{Type: m.Type(), ID: protocol.IDOf(m)}
	switch m := m.(type) {
	case protocol.Progress:
		v.Stage, v.Step, v.Total = m.Stage, m.Step, m.Total
	case protocol.Preview:
		v.Step, v.Path = m.Step, m.Path
	case protocol.Result:
		v.Images, v.Metrics = m.Images, m.Metrics
	case protocol.Error:
		v.Code, v.Message, v.Detail, v.Field = m.Code, m.Message, m.Detail, m.Field
	case protocol.Loading:
		v.Message = m.Message
	}
	return v
}

// collect reads a job's channel until it closes.
func collect(t *testing.T, ch <-chan protocol.Message, timeout time.Duration) []seen {
	t.Helper()
	var got []seen
	deadline := time.After(timeout)
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				require.NotEmpty(t, got, "the channel closed without a final message")
				return got
			}
			got = append(got, seenOf(m))
		case <-deadline:
			t.Fatalf("the job did not end within %s; messages so far: %+v", timeout, got)
		}
	}
}

// finalOf checks the message sequence's shape and returns the final message.
func finalOf(t *testing.T, id string, msgs []seen) seen {
	t.Helper()
	for i, m := range msgs {
		require.Equal(t, id, m.ID, "message %d %+v", i, m)
		last := i == len(msgs)-1
		isFinal := m.Type == protocol.MsgResult || m.Type == protocol.MsgError
		require.Equal(t, last, isFinal, "exactly one final message, at the end: %+v", msgs)
	}
	return msgs[len(msgs)-1]
}

func types(msgs []seen) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, m.Type)
	}
	return out
}

func countType(msgs []seen, typ string) int {
	n := 0
	for _, m := range msgs {
		if m.Type == typ {
			n++
		}
	}
	return n
}

func asJobError(t *testing.T, err error) *failure.JobError {
	t.Helper()
	require.Error(t, err)
	var je *failure.JobError
	require.True(t, errors.As(err, &je), "want a *failure.JobError, got %T: %v", err, err)
	require.True(t, je.Code.Valid(), "code %q", je.Code)
	require.NotEmpty(t, je.Message)
	return je
}

// runJob submits a job and waits for its end.
func runJob(t *testing.T, b *Bridge, id string, req request.Request) (seen, []seen) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ch, err := b.Submit(ctx, id, req)
	require.NoError(t, err)
	msgs := collect(t, ch, 5*time.Minute)
	return finalOf(t, id, msgs), msgs
}

// requireResult checks that a job ended with a result whose images exist.
func requireResult(t *testing.T, final seen, req request.Request) {
	t.Helper()
	require.Equal(t, protocol.MsgResult, final.Type, "final message: %+v", final)
	require.Len(t, final.Images, max(req.BatchSize, 1))
	for _, im := range final.Images {
		f, err := os.Open(im.Path)
		require.NoError(t, err, "the result's image must exist")
		cfg, err := png.DecodeConfig(f)
		f.Close()
		require.NoError(t, err, "the result's image must be a PNG")
		require.Equal(t, req.Width, cfg.Width)
		require.Equal(t, req.Height, cfg.Height)
	}
}

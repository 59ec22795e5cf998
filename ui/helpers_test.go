package ui

import (
	"context"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/test"
	"fyne.io/fyne/v2/widget"

	"atelier/core/jobs"
	"atelier/core/request"
	"atelier/core/store"
)

// uiQueue stands in for the app's UI goroutine: the studio's goroutines
// post to it and the test goroutine runs what they posted, so widgets are
// only ever touched from the test goroutine, as in the app.
type uiQueue struct {
	mu sync.Mutex
	fs []func()
}

func (q *uiQueue) post(f func()) {
	q.mu.Lock()
	q.fs = append(q.fs, f)
	q.mu.Unlock()
}

// drain runs everything posted so far, and anything those functions post.
func (q *uiQueue) drain() {
	for {
		q.mu.Lock()
		fs := q.fs
		q.fs = nil
		q.mu.Unlock()
		if len(fs) == 0 {
			return
		}
		for _, f := range fs {
			f()
		}
	}
}

// testStudio is a studio in a test window with its UI queue.
type testStudio struct {
	*Studio
	q *uiQueue
}

func newTestStudio(t *testing.T, gen generator, hist History) testStudio {
	t.Helper()
	a := test.NewTempApp(t)
	w := test.NewTempWindow(t, widget.NewLabel(""))
	w.Resize(fyne.NewSize(1200, 800))
	q := &uiQueue{}
	s := newStudio(a, w, gen, hist, q.post)
	return testStudio{s, q}
}

// waitFor runs the UI queue and checks cond until it holds or the deadline
// passes. Deadlines are generous: these tests check behaviour, not speed.
func (s testStudio) waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s.q.drain()
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (status %q, progress %q)",
				timeout, what, s.status.text.Text, s.barLabel.Text)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// settle waits until the studio's background reads of a store.Store (the
// history strip, the model library) are on screen and the form it saves on
// each edit is written, so that the store can close and its folder go with
// nothing in flight: a connection released
// after Close would remove SQLite's -wal and -shm files under the folder's
// cleanup.
func (s testStudio) settle(t *testing.T) {
	t.Helper()
	s.waitFor(t, 20*time.Second, "the background reads of the store", func() bool {
		return s.historyLoaded() && s.form.lib != nil && (s.x == nil || s.x.formSaver.idle()) && s.cpuNoteShown()
	})
}

// cpuNoteShown reports whether the newest check of the form for the CPU
// note is on screen (it reads the history off the UI goroutine).
func (s testStudio) cpuNoteShown() bool { return s.cpu.shown == s.cpu.seq }

// fakeGen is a generator whose job is a function; it counts the jobs it ran.
type fakeGen struct {
	calls atomic.Int32
	last  atomic.Pointer[request.Request]
	run   func(ctx context.Context, req request.Request, onEvent func(event)) (*jobs.JobOutcome, error)
}

func (g *fakeGen) Run(ctx context.Context, req request.Request, onEvent func(event)) (*jobs.JobOutcome, error) {
	g.calls.Add(1)
	g.last.Store(&req)
	return g.run(ctx, req, onEvent)
}

// memHistory is a History over a slice, newest first.
type memHistory struct {
	mu   sync.Mutex
	recs []store.ImageRecord
}

func (h *memHistory) RecentImages(_ context.Context, limit int) ([]store.ImageRecord, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := min(limit, len(h.recs))
	return append([]store.ImageRecord(nil), h.recs[:n]...), nil
}

func (h *memHistory) add(r store.ImageRecord) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append([]store.ImageRecord{r}, h.recs...)
}

// writePNG writes a w×h image of one colour and returns its path.
func writePNG(t *testing.T, dir, name string, w, h int, c color.Color) string {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, c)
		}
	}
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := png.Encode(f, img); err != nil {
		t.Fatal(err)
	}
	return p
}

// setForm fills the form for a small, fast job.
func setForm(s testStudio, prompt string, steps, w, h int) {
	f := s.form
	f.prompts.prompt.SetText("")
	test.Type(f.prompts.prompt, prompt)
	f.model.entry.SetText(request.TinyModel)
	f.steps.steps.SetText(strconv.Itoa(steps))
	f.size.width.SetText(strconv.Itoa(w))
	f.size.height.SetText(strconv.Itoa(h))
	f.seed.seed.SetText("-1")
}

package ui

import (
	"context"
	"errors"
	"image/color"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/jobs"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
)

// scriptedJob is a fake job: it sends progress and a preview for each step,
// writes a result image and records it in hist, as the runner and store do.
func scriptedJob(t *testing.T, hist *memHistory, dir string) func(context.Context, request.Request, func(event)) (*jobs.JobOutcome, error) {
	preview := writePNG(t, dir, "preview.png", 8, 8, color.NRGBA{R: 200, A: 255})
	return func(ctx context.Context, req request.Request, on func(event)) (*jobs.JobOutcome, error) {
		on(event{kind: evProgress, stage: "encoding"})
		for i := 1; i <= req.Steps; i++ {
			on(event{kind: evProgress, stage: "denoising", step: i, total: req.Steps})
			on(event{kind: evPreview, step: i, preview: preview})
		}
		path := writePNG(t, dir, "result.png", req.Width, req.Height, color.NRGBA{G: 200, A: 255})
		img := protocol.ImageResult{Path: path, Seed: 77, Width: req.Width, Height: req.Height}
		hist.add(store.ImageRecord{Path: path, Seed: 77, Width: req.Width, Height: req.Height, Prompt: req.Prompt, Model: req.Model})
		return &jobs.JobOutcome{JobID: 1, Images: []protocol.ImageResult{img}, Metrics: &protocol.Metrics{TotalS: 0.5, Device: "cpu"}}, nil
	}
}

func TestGenerateShowsResultAndGrowsStrip(t *testing.T) {
	hist := &memHistory{}
	old := writePNG(t, t.TempDir(), "old.png", 16, 16, color.NRGBA{B: 200, A: 255})
	hist.add(store.ImageRecord{Path: old, Seed: 1, Width: 16, Height: 16, Prompt: "older"})
	gen := &fakeGen{run: scriptedJob(t, hist, t.TempDir())}
	s := newTestStudio(t, gen, hist)
	s.waitFor(t, 20*time.Second, "the history to load", func() bool { return s.strip.len() == 1 })
	assert.Equal(t, old, s.view.img.File, "the studio opens on the newest image")

	setForm(s, "a green square", 3, 64, 64)
	test.Tap(s.generate)
	assert.True(t, s.generate.Disabled(), "Generate is disabled while a job runs")
	assert.False(t, s.cancel.Disabled(), "Cancel is enabled while a job runs")
	s.waitFor(t, 10*time.Second, "the job to finish", func() bool { return s.job == nil })

	require.Equal(t, int32(1), gen.calls.Load())
	req := gen.last.Load()
	assert.Equal(t, "a green square", req.Prompt)
	assert.Equal(t, 3, req.Steps)
	out := hist.recs[0].Path
	assert.Equal(t, out, s.view.img.File, "the viewer shows the result file")
	assert.Contains(t, s.view.info.Text, "seed 77")
	assert.Equal(t, statusDone, s.status.kind)
	assert.Contains(t, s.status.text.Text, "seed 77")
	assert.Equal(t, 1.0, s.bar.Value)
	assert.True(t, s.cancel.Disabled(), "Cancel is disabled once the job is over")
	assert.False(t, s.generate.Disabled())

	s.waitFor(t, 20*time.Second, "the strip to show the new image", func() bool { return s.strip.len() == 2 })
	assert.Equal(t, out, s.strip.items[0].Path)
	assert.Equal(t, out, s.strip.selected, "the new image is the selected tile")
	s.waitFor(t, 20*time.Second, "thumbnails", func() bool {
		return s.strip.tiles[0].img.Image != nil && s.strip.tiles[1].img.Image != nil
	})

	// Tapping an older tile shows it; "Use settings" loads it back into the form.
	test.Tap(s.strip.tiles[1])
	assert.Equal(t, old, s.view.img.File)
	test.Tap(s.view.reuseAll)
	assert.Equal(t, "older", s.form.prompts.prompt.Text)
	assert.Equal(t, "1", s.form.seed.seed.Text)
	assert.Equal(t, "16", s.form.size.width.Text)
}

func TestInvalidFormRunsNoJob(t *testing.T) {
	gen := &fakeGen{run: func(context.Context, request.Request, func(event)) (*jobs.JobOutcome, error) {
		t.Error("no job may run for an invalid form")
		return nil, nil
	}}
	s := newTestStudio(t, gen, &memHistory{})
	s.form.prompts.prompt.SetText("")
	s.form.steps.steps.SetText("0")
	s.form.size.width.SetText("63")
	test.Tap(s.generate)
	s.q.drain()

	assert.Nil(t, s.job)
	assert.Equal(t, int32(0), gen.calls.Load())
	assert.Equal(t, "Prompt must not be empty", s.form.fieldError(fPrompt))
	assert.Equal(t, "Steps must be between 1 and 150, got 0", s.form.fieldError(fSteps))
	assert.Equal(t, "Width must be a multiple of 8 between 64 and 4096, got 63", s.form.fieldError(fWidth))
	assert.Empty(t, s.form.fieldError(fHeight), "a valid field carries no error")
	assert.Contains(t, s.status.text.Text, "Fix the marked fields")

	// Editing a field clears its message, and only its message.
	test.Type(s.form.steps.steps, "4")
	assert.Empty(t, s.form.fieldError(fSteps))
	assert.NotEmpty(t, s.form.fieldError(fWidth))
}

func TestCtrlEnterGenerates(t *testing.T) {
	hist := &memHistory{}
	gen := &fakeGen{run: scriptedJob(t, hist, t.TempDir())}
	s := newTestStudio(t, gen, hist)
	setForm(s, "shortcut", 2, 64, 64)

	// A focused prompt gets the shortcut itself, not the canvas.
	s.form.prompts.prompt.TypedShortcut(submitShortcuts[0])
	s.waitFor(t, 10*time.Second, "the job to finish", func() bool { return s.job == nil })
	assert.Equal(t, int32(1), gen.calls.Load())
	assert.NotContains(t, s.form.prompts.prompt.Text, "\n", "the shortcut does not type a newline")

	// Every entry of the form takes it, not only the prompt.
	s.form.steps.steps.TypedShortcut(submitShortcuts[1])
	s.waitFor(t, 10*time.Second, "the second job to finish", func() bool { return s.job == nil })
	assert.Equal(t, int32(2), gen.calls.Load())
}

func TestCancelEndsAsCancelled(t *testing.T) {
	started := make(chan struct{})
	gen := &fakeGen{run: func(ctx context.Context, req request.Request, on func(event)) (*jobs.JobOutcome, error) {
		on(event{kind: evProgress, stage: "denoising", step: 5, total: req.Steps})
		close(started)
		<-ctx.Done() // a job only ends early because it was cancelled
		return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "the job was cancelled"}
	}}
	s := newTestStudio(t, gen, &memHistory{})
	setForm(s, "long", 60, 64, 64)
	test.Tap(s.generate)
	<-started
	s.waitFor(t, 20*time.Second, "progress to show", func() bool { return s.bar.Value > 0 })
	assert.Contains(t, s.barLabel.Text, "Denoising — 5/60")

	test.Tap(s.cancel)
	assert.True(t, s.cancel.Disabled(), "Cancel is not offered twice")
	s.waitFor(t, 10*time.Second, "the job to end", func() bool { return s.job == nil })
	assert.Contains(t, s.status.text.Text, "Cancelled")
	assert.Equal(t, statusWarn, s.status.kind)
	assert.Contains(t, s.barLabel.Text, "Cancelled at 5/60")
	assert.False(t, s.generate.Disabled())
}

func TestJobErrorShownBesideFieldWithDetail(t *testing.T) {
	gen := &fakeGen{run: func(context.Context, request.Request, func(event)) (*jobs.JobOutcome, error) {
		return nil, &failure.JobError{Code: failure.ErrModelNotFound, Field: "model",
			Message: "model /nope does not exist: use \"tiny\"", Detail: "stat /nope: no such file"}
	}}
	s := newTestStudio(t, gen, &memHistory{})
	setForm(s, "x", 2, 64, 64)
	s.form.model.entry.SetText("/nope")
	test.Tap(s.generate)
	s.waitFor(t, 20*time.Second, "the job to fail", func() bool { return s.job == nil })

	assert.Equal(t, `Model /nope does not exist: use "tiny"`, s.form.fieldError(fModel))
	assert.Equal(t, `Model /nope does not exist: use "tiny"`, s.status.text.Text)
	assert.Equal(t, statusError, s.status.kind)
	assert.True(t, s.status.details.Visible(), "the technical detail is one click away")
}

func TestProgressIsCoalesced(t *testing.T) {
	gen := &fakeGen{run: func(ctx context.Context, req request.Request, on func(event)) (*jobs.JobOutcome, error) {
		for i := 1; i <= 5000; i++ {
			on(event{kind: evProgress, stage: "denoising", step: i, total: 5000})
		}
		time.Sleep(50 * time.Millisecond) // let the last frame through before the job ends
		return nil, &failure.JobError{Code: failure.ErrInternal, Message: "stop"}
	}}
	// Count the UI updates that reach the UI goroutine.
	var posts atomic.Int32
	q := &uiQueue{}
	st := newStudio(test.NewTempApp(t), test.NewTempWindow(t, nil), gen, &memHistory{},
		func(f func()) { posts.Add(1); q.post(f) })
	s := testStudio{st, q}
	setForm(s, "many", 150, 64, 64)
	test.Tap(s.generate)
	s.waitFor(t, 10*time.Second, "the job to end", func() bool { return s.job == nil })
	// 5000 events must not become 5000 UI updates: some frames plus the finish.
	assert.Less(t, posts.Load(), int32(500))
	assert.Contains(t, s.barLabel.Text, "Failed")
}

func TestImageMadeButNotRecordedIsStillShown(t *testing.T) {
	dir := t.TempDir()
	gen := &fakeGen{run: func(context.Context, request.Request, func(event)) (*jobs.JobOutcome, error) {
		p := writePNG(t, dir, "made.png", 64, 64, color.White)
		return &jobs.JobOutcome{Images: []protocol.ImageResult{{Path: p, Seed: 5, Width: 64, Height: 64}}},
			errors.New("the images were made but not recorded in the history: disk full")
	}}
	s := newTestStudio(t, gen, &memHistory{})
	setForm(s, "x", 2, 64, 64)
	test.Tap(s.generate)
	s.waitFor(t, 20*time.Second, "the job to end", func() bool { return s.job == nil })
	assert.Equal(t, filepath.Join(dir, "made.png"), s.view.img.File)
	assert.Equal(t, statusError, s.status.kind)
	assert.Contains(t, s.status.text.Text, "disk full")
}

// An upscale runs no denoising steps: it does not end as "done — 150/150".
func TestUpscaleOnlyDoesNotReportSteps(t *testing.T) {
	hist := &memHistory{}
	src := writePNG(t, t.TempDir(), "src.png", 32, 32, color.NRGBA{B: 200, A: 255})
	gen := &fakeGen{run: func(ctx context.Context, req request.Request, on func(event)) (*jobs.JobOutcome, error) {
		path := writePNG(t, t.TempDir(), "up.png", 64, 64, color.NRGBA{G: 200, A: 255})
		hist.add(store.ImageRecord{Path: path, Seed: req.Seed, Width: 64, Height: 64, Prompt: req.Prompt, Model: req.Model})
		return &jobs.JobOutcome{JobID: 1, Images: []protocol.ImageResult{{Path: path, Seed: req.Seed, Width: 64, Height: 64}}}, nil
	}}
	s := newTestStudio(t, gen, hist)
	s.upscaleImage(src, request.Request{Prompt: "a square", Steps: 150, Width: 32, Height: 32, Seed: 5})
	s.waitFor(t, 10*time.Second, "the upscale to finish", func() bool { return s.job == nil })
	require.True(t, gen.last.Load().UpscaleOnly)
	assert.NotContains(t, s.barLabel.Text, "150")
	assert.Contains(t, s.barLabel.Text, "upscaled to 64 × 64")
	assert.Contains(t, s.status.text.Text, "Upscaled to 64 × 64")
}

package ui

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/storage"
	"fyne.io/fyne/v2/test"
	"fyne.io/fyne/v2/widget"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/jobs"
	"atelier/core/media"
	"atelier/core/paths"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
)

// servicesStudio is a studio with the queue and gallery tabs over a real
// store in a temporary home; gen runs the Generate button's jobs.
func servicesStudio(t *testing.T, gen generator, q QueueRunner) (testStudio, *store.Store, paths.Paths) {
	t.Helper()
	paths := paths.PathsUnder(t.TempDir())
	require.NoError(t, paths.EnsureDirs())
	st, err := store.OpenStore(paths.DB)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return studioOver(t, st, paths, gen, q), st, paths
}

func studioOver(t *testing.T, st *store.Store, paths paths.Paths, gen generator, q QueueRunner) testStudio {
	t.Helper()
	return studioIn(t, st, paths, gen, q, func() fyne.Window { return test.NewTempWindow(t, widget.NewLabel("")) })
}

// studioIn is studioOver in a window of the caller's making (made once the
// test app exists).
func studioIn(t *testing.T, st *store.Store, paths paths.Paths, gen generator, q QueueRunner, newWindow func() fyne.Window) testStudio {
	t.Helper()
	exportDir := filepath.Join(t.TempDir(), "export")
	svc := &Services{Store: st, Queue: q, Paths: paths,
		Thumbs: media.NewThumbnailer(paths.Cache, galleryThumbPx),
		ExportImages: func(ctx context.Context, ids []int64, dir string) ([]string, error) {
			return store.ExportImages(ctx, st, ids, dir)
		},
		ChooseFolder: func(string) (string, error) { return exportDir, nil },
	}
	a := test.NewTempApp(t)
	w := newWindow()
	w.Resize(fyne.NewSize(1400, 900))
	uq := &uiQueue{}
	if gen == nil {
		gen = &fakeGen{run: func(context.Context, request.Request, func(event)) (*jobs.JobOutcome, error) {
			return nil, &failure.JobError{Code: failure.ErrInternal, Message: "no generator in this test"}
		}}
	}
	s := newStudioWith(a, w, gen, st, uq.post, svc)
	t.Cleanup(s.x.gallery.thumbs.close) // before the temporary folders go
	ts := testStudio{s, uq}
	t.Cleanup(func() { ts.settle(t) }) // before the store closes
	return ts
}

// waitingPrompts is the queue's waiting jobs' prompts, in order.
func waitingPrompts(t *testing.T, st *store.Store) []string {
	t.Helper()
	jobs, err := st.QueueJobs(context.Background())
	require.NoError(t, err)
	var out []string
	for _, j := range jobs {
		if j.Runnable() {
			out = append(out, j.Request.Prompt)
		}
	}
	return out
}

// row returns the queue row showing job id (the list must show it).
func (s testStudio) row(t *testing.T, id int64) *queueRow {
	t.Helper()
	s.q.drain()
	r := s.x.queue.rows[id]
	require.NotNil(t, r, "no row shows job %d", id)
	require.Equal(t, id, r.id)
	return r
}

func TestQueueViewFillReorderCancelEdit(t *testing.T) {
	s, st, _ := servicesStudio(t, nil, nil)
	ctx := context.Background()
	require.NoError(t, st.SetQueuePaused(ctx, true)) // nothing runs: this test is about the list

	// Fill the queue from the form: a batch count of 4 makes 4 jobs.
	setForm(s, "a lighthouse", 4, 64, 64)
	s.form.seed.seed.SetText("100")
	s.form.batch.batchCount.SetText("4")
	test.Tap(s.x.addQueue)
	s.q.drain()
	assert.Contains(t, s.status.text.Text, "Queued 4 jobs")
	assert.Contains(t, s.status.text.Text, "paused")
	queued, err := st.QueueJobs(ctx)
	require.NoError(t, err)
	require.Len(t, queued, 4)
	ids := make([]int64, 4)
	for i, j := range queued {
		ids[i] = j.ID
		assert.Equal(t, store.StatusPending, j.Status)
		assert.Equal(t, int64(100+i), j.Request.Seed, "job k starts at seed + k")
		assert.NotZero(t, j.SessionID, "the jobs belong to this sitting's session")
	}
	// An invalid form queues nothing.
	s.form.steps.steps.SetText("0")
	test.Tap(s.x.addQueue)
	assert.NotEmpty(t, s.form.fieldError(fSteps))
	assert.Len(t, waitingPrompts(t, st), 4)
	s.form.steps.steps.SetText("4")

	// The queue tab shows them, with the summary.
	s.x.tabs.SelectIndex(tabQueue)
	s.q.drain()
	v := s.x.queue
	require.Len(t, v.jobs, 4)
	assert.Contains(t, v.summary.Text, "4 waiting")
	assert.Contains(t, v.summary.Text, "paused")
	assert.Contains(t, s.row(t, ids[0]).status.Text, "pending")

	// Distinguish the jobs by editing their prompts in the form: a, b, c, d.
	e := s.x.edit
	for i, p := range []string{"a", "b", "c", "d"} {
		test.Tap(s.row(t, ids[i]).edit)
		require.True(t, e.bar.Visible(), "the form shows the edit bar")
		s.form.prompts.prompt.SetText(p)
		test.Tap(e.save)
		assert.False(t, e.bar.Visible(), "saving ends the edit")
		s.x.tabs.SelectIndex(tabQueue)
	}
	assert.Equal(t, []string{"a", "b", "c", "d"}, waitingPrompts(t, st))

	// Reorder with the row buttons.
	test.Tap(s.row(t, ids[3]).top)
	assert.Equal(t, []string{"d", "a", "b", "c"}, waitingPrompts(t, st))
	test.Tap(s.row(t, ids[0]).down)
	assert.Equal(t, []string{"d", "b", "a", "c"}, waitingPrompts(t, st))
	test.Tap(s.row(t, ids[2]).up)
	assert.Equal(t, []string{"d", "b", "c", "a"}, waitingPrompts(t, st))
	var shown []string
	for _, j := range v.jobs {
		shown = append(shown, j.Request.Prompt)
	}
	assert.Equal(t, waitingPrompts(t, st), shown, "the list follows the store's order")

	// Cancel one: it leaves the waiting jobs and can be retried.
	test.Tap(s.row(t, ids[1]).cancel)
	r := s.row(t, ids[1])
	assert.Contains(t, r.status.Text, "cancelled")
	assert.False(t, r.retry.Disabled())
	assert.True(t, r.up.Disabled(), "a finished job does not move")
	assert.NotContains(t, waitingPrompts(t, st), "b")
	assert.Contains(t, v.summary.Text, "3 waiting")

	// Edit checks the values as the form does and stays in edit mode on an error.
	test.Tap(s.row(t, ids[2]).edit)
	s.form.steps.steps.SetText("0")
	test.Tap(e.save)
	assert.True(t, e.bar.Visible())
	assert.NotEmpty(t, s.form.fieldError(fSteps))
	s.form.steps.steps.SetText("3")
	s.form.seed.seed.SetText("77")
	test.Tap(e.save)
	assert.False(t, e.bar.Visible())
	j, err := st.GetQueueJob(ctx, ids[2])
	require.NoError(t, err)
	assert.Equal(t, 3, j.Request.Steps)
	assert.Equal(t, int64(77), j.Request.Seed)
	s.x.tabs.SelectIndex(tabQueue)

	// Retry the cancelled job: a new pending one at the end.
	test.Tap(s.row(t, ids[1]).retry)
	assert.Equal(t, []string{"d", "c", "a", "b"}, waitingPrompts(t, st))

	// Resume, then clear the finished (cancelled) job from the list.
	test.Tap(v.pause)
	paused, err := st.QueuePaused(ctx)
	require.NoError(t, err)
	assert.False(t, paused)
	assert.Equal(t, "Pause", v.pause.Text)
	test.Tap(v.clear)
	s.q.drain()
	assert.Len(t, v.jobs, 4)
	for _, j := range v.jobs {
		assert.NotEqual(t, store.StatusCancelled, j.Status)
	}

	// A worker that cannot start is explained, with its detail one click away.
	s.OnQueueEvent(jobs.QueueEvent{Kind: jobs.QueueStalled, Err: fmt.Errorf("%w: %w", jobs.ErrWorkerUnavailable,
		&failure.JobError{Code: failure.ErrWorkerCrashed, Message: "the worker stopped right after it started", Detail: "ImportError: torch"})})
	s.q.drain()
	assert.Contains(t, s.status.text.Text, "stopped right after it started")
	assert.Contains(t, s.status.text.Text, "jobs stay queued")
	assert.Equal(t, "ImportError: torch", s.status.detail)

	// The session of this sitting, with its figures.
	test.Tap(v.sessions)
	require.NotNil(t, v.sessionsPop)
	var cells []string
	walkObjects(v.sessionsGrid, func(o fyne.CanvasObject) {
		if l, ok := o.(*widget.Label); ok {
			cells = append(cells, l.Text)
		}
	})
	require.Len(t, cells, 2*9, "a header and one session")
	// The table is as tall as its rows: no blank under the one session.
	var scroll *container.Scroll
	walkObjects(v.sessionsPop.Content, func(o fyne.CanvasObject) {
		if sc, ok := o.(*container.Scroll); ok {
			scroll = sc
		}
	})
	require.NotNil(t, scroll)
	assert.InDelta(t, v.sessionsGrid.MinSize().Height, scroll.Size().Height, 1, "the list ends at its last row")
	assert.Contains(t, cells[9], "(ui)")
	assert.Equal(t, "5", cells[11], "four jobs and the retry")
	assert.Equal(t, "0", cells[13], "a cancelled job is not a failure")
	assert.Equal(t, "4", cells[14], "waiting")
}

func TestQueueRunsInTheBackgroundWithTheRealWorker(t *testing.T) {
	br := sharedBridge(t)
	paths := paths.PathsUnder(t.TempDir())
	require.NoError(t, paths.EnsureDirs())
	st, err := store.OpenStore(paths.DB)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	runner := jobs.NewRunner(st, br, paths)
	q := jobs.NewQueueRunner(runner)
	s := studioOver(t, st, paths, eventsOf(runner), q)
	q.OnEvent = s.OnQueueEvent

	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx, false) }()
	t.Cleanup(func() {
		stop()
		<-done
	})

	setForm(s, "a queued lighthouse", 2, 64, 64)
	s.form.batch.batchCount.SetText("2")
	test.Tap(s.x.addQueue)
	s.x.tabs.SelectIndex(tabQueue)
	v := s.x.queue
	s.waitFor(t, jobDeadline, "both queue jobs done", func() bool {
		n := 0
		for _, j := range v.jobs {
			if j.Status == store.StatusDone {
				n++
			}
		}
		return n == 2
	})
	for _, j := range v.jobs {
		r := s.row(t, j.ID)
		assert.Contains(t, r.status.Text, "done")
		assert.Equal(t, 1.0, r.bar.Value)
		assert.Contains(t, r.eta.Text, "it/s", "a done job shows its time and speed")
	}
	assert.NotContains(t, v.summary.Text, "waiting · 1 running")
	s.waitFor(t, 30*time.Second, "the strip shows the queue's images", func() bool { return s.strip.len() == 2 })

	// The gallery lists them, and the measured speed now gives ETAs.
	s.x.tabs.SelectIndex(tabGallery)
	s.q.drain()
	assert.Equal(t, "2 images", s.x.gallery.countLabel.Text)
	rate, err := st.MeasuredRate(context.Background(), 10)
	require.NoError(t, err)
	assert.True(t, rate.Known())
	require.NoError(t, st.SetQueuePaused(context.Background(), true))
	s.x.tabs.SelectIndex(tabStudio)
	test.Tap(s.x.addQueue)
	s.x.tabs.SelectIndex(tabQueue)
	s.q.drain()
	assert.Contains(t, v.summary.Text, "queue ETA")
}

// pngWithParameters writes a PNG with a `parameters` text chunk.
func pngWithParameters(t *testing.T, dir, name, params string) string {
	t.Helper()
	p := writePNG(t, dir, name, 64, 64, color.NRGBA{R: 90, G: 120, B: 200, A: 255})
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	data := []byte("parameters\x00" + params)
	var chunk bytes.Buffer
	binary.Write(&chunk, binary.BigEndian, uint32(len(data))) //nolint:errcheck // a bytes.Buffer does not fail
	chunk.WriteString("tEXt")
	chunk.Write(data)
	crc := crc32.NewIEEE()
	crc.Write([]byte("tEXt"))
	crc.Write(data)
	binary.Write(&chunk, binary.BigEndian, crc.Sum32()) //nolint:errcheck // idem
	const ihdrEnd = 8 + 8 + 13 + 4
	out := append(append(append([]byte{}, b[:ihdrEnd]...), chunk.Bytes()...), b[ihdrEnd:]...)
	require.NoError(t, os.WriteFile(p, out, 0o644))
	return p
}

func TestDroppingAPNGLoadsItsSettings(t *testing.T) {
	s, _, _ := servicesStudio(t, nil, nil)
	dir := t.TempDir()
	p := pngWithParameters(t, dir, "a1111.png", "a castle in the clouds\nNegative prompt: fog\n"+
		"Steps: 12, Sampler: DDIM, CFG scale: 6.5, Seed: 4242, Size: 64x64, Model: tiny")
	s.x.tabs.SelectIndex(tabGallery)
	s.Dropped([]fyne.URI{storageURI(p)})
	s.q.drain()
	assert.Equal(t, tabStudio, s.x.tabs.SelectedIndex(), "the form comes to the front")
	assert.Equal(t, "a castle in the clouds", s.form.prompts.prompt.Text)
	assert.Equal(t, "fog", s.form.prompts.negative.Text)
	assert.Equal(t, "12", s.form.steps.steps.Text)
	assert.Equal(t, "6.5", s.form.steps.cfg.Text)
	assert.Equal(t, "4242", s.form.seed.seed.Text)
	assert.Equal(t, "DDIM", s.form.sampling.scheduler.Selected, "the sampler shows A1111's name")
	assert.Contains(t, s.status.text.Text, "a1111.png")

	// A picture without settings becomes the init image; the rest of the form stays.
	plain := writePNG(t, dir, "plain.png", 8, 8, color.White)
	s.Dropped([]fyne.URI{storageURI(plain)})
	assert.Contains(t, s.status.text.Text, "plain.png is the init image")
	assert.Equal(t, "a castle in the clouds", s.form.prompts.prompt.Text)
	assert.Equal(t, plain, s.form.img2img.initImage.Text)
	assert.Equal(t, [2]string{"64", "64"}, [2]string{s.form.size.width.Text, s.form.size.height.Text}, "8 px is below the smallest size")

	photo := filepath.Join(dir, "photo.jpg")
	f, err := os.Create(photo)
	require.NoError(t, err)
	require.NoError(t, jpeg.Encode(f, image.NewRGBA(image.Rect(0, 0, 203, 120)), nil))
	require.NoError(t, f.Close())
	s.Dropped([]fyne.URI{storageURI(photo)})
	assert.Equal(t, photo, s.form.img2img.initImage.Text)
	assert.Equal(t, [2]string{"200", "120"}, [2]string{s.form.size.width.Text, s.form.size.height.Text}, "its size, down to a multiple of 8")
	req, verr := s.form.request()
	require.Nil(t, verr)
	assert.Equal(t, photo, req.InitImage)

	big := writePNG(t, dir, "big.png", 6000, 4000, color.White)
	s.Dropped([]fyne.URI{storageURI(big)})
	assert.Equal(t, [2]string{"4096", "2728"}, [2]string{s.form.size.width.Text, s.form.size.height.Text}, "scaled down whole to the largest size")

	s.Dropped([]fyne.URI{storageURI(filepath.Join(dir, "notes.txt"))})
	assert.True(t, strings.Contains(s.status.text.Text, "Drop a PNG"), s.status.text.Text)
}

func TestWindowLayoutAndFormAreRemembered(t *testing.T) {
	paths := paths.PathsUnder(t.TempDir())
	require.NoError(t, paths.EnsureDirs())
	st, err := store.OpenStore(paths.DB)
	require.NoError(t, err)
	defer st.Close()

	s := studioOver(t, st, paths, nil, nil)
	setForm(s, "remember this prompt", 9, 128, 64)
	s.x.split.SetOffset(0.4)
	s.x.tabs.SelectIndex(tabGallery)
	s.win.Resize(fyne.NewSize(1111, 777))
	s.saveState() // what closing the window does

	again := studioOver(t, st, paths, nil, nil)
	assert.Equal(t, "remember this prompt", again.form.prompts.prompt.Text)
	assert.Equal(t, "9", again.form.steps.steps.Text)
	assert.Equal(t, "128", again.form.size.width.Text)
	assert.InDelta(t, 0.4, again.x.split.Offset, 1e-6)
	assert.Equal(t, tabGallery, again.x.tabs.SelectedIndex())
	assert.Equal(t, fyne.NewSize(1111, 777), again.win.Canvas().Size())
}

func storageURI(path string) fyne.URI { return storage.NewFileURI(path) }

func TestQueueViewShowsProgressAndETAs(t *testing.T) {
	s, st, _ := servicesStudio(t, nil, nil)
	ctx := context.Background()
	// One done job gives the measured speed: 64×64, 4 steps in 2 s of denoising.
	done := request.DefaultRequest()
	done.Prompt, done.Steps, done.Width, done.Height, done.BatchSize = "measured", 4, 64, 64, 1
	id, err := st.CreateJob(ctx, "measured", done)
	require.NoError(t, err)
	require.NoError(t, st.FinishJob(ctx, id, &protocol.Metrics{TotalS: 3, DenoiseS: 2, ItS: 2}, nil))

	req := done
	req.Prompt, req.Steps, req.Seed = "queued", 10, 1
	ids, err := st.Enqueue(ctx, 0, []request.Request{req, req})
	require.NoError(t, err)
	job, err := st.ClaimNext(ctx) // as the runner does
	require.NoError(t, err)
	require.Equal(t, ids[0], job.ID)

	s.x.tabs.SelectIndex(tabQueue)
	s.OnQueueEvent(jobs.QueueEvent{Kind: jobs.QueueStarted, Job: job})
	for step := 0; step <= 5; step++ {
		// Denoising from 1 s on, at 5 steps per second.
		s.OnQueueEvent(jobs.QueueEvent{Kind: jobs.QueueMessage, Job: job, Message: protocol.Progress{ID: job.UID, Stage: "denoising", Step: step, Total: 10, ElapsedS: 1 + float64(step)/5}})
	}
	s.q.drain()
	r := s.row(t, ids[0])
	assert.Contains(t, r.status.Text, "running")
	assert.InDelta(t, 0.5, r.bar.Value, 1e-9)
	// 5 steps left at 5 steps/s, plus half the measured 1 s outside denoising.
	assert.Equal(t, "5/10 · 2 s left", r.eta.Text)
	// The waiting job: 10 steps at the running job's 5 steps/s, plus 1 s.
	assert.Equal(t, "about 3 s", s.row(t, ids[1]).eta.Text)
	assert.Contains(t, s.x.queue.summary.Text, "1 waiting · 1 running")
	assert.Contains(t, s.x.queue.summary.Text, "queue ETA 5 s") // 1.5 s + 3 s
	assert.True(t, r.edit.Disabled(), "a running job is not edited")
	assert.False(t, r.cancel.Disabled(), "a running job can be cancelled")
}

// TestEditQueuedJobInTheForm edits a pending job through the whole form:
// features the queue list never showed (sampler, schedule, LoRA, images per
// job) change too, Discard leaves the job alone, and the user's draft comes back.
func TestEditQueuedJobInTheForm(t *testing.T) {
	s, st, _ := servicesStudio(t, nil, nil)
	ctx := context.Background()
	require.NoError(t, st.SetQueuePaused(ctx, true))
	setForm(s, "a queued harbour", 4, 64, 64)
	s.form.seed.seed.SetText("5")
	test.Tap(s.x.addQueue)
	s.q.drain()
	jobs, err := st.QueueJobs(ctx)
	require.NoError(t, err)
	require.Len(t, jobs, 1)
	id := jobs[0].ID
	s.form.prompts.prompt.SetText("my unfinished draft")

	s.x.tabs.SelectIndex(tabQueue)
	s.q.drain()
	e := s.x.edit
	assert.False(t, e.bar.Visible(), "no edit bar before Edit")
	test.Tap(s.row(t, id).edit)
	assert.Equal(t, tabStudio, s.x.tabs.SelectedIndex(), "Edit brings the form to the front")
	assert.True(t, e.bar.Visible())
	assert.Equal(t, fmt.Sprintf("Editing queued job #%d", id), e.label.Text)
	assert.Equal(t, "Save to queue", e.save.Text)
	assert.Equal(t, "Discard", e.discard.Text)
	assert.Equal(t, "a queued harbour", s.form.prompts.prompt.Text, "the job's request fills the form")
	assert.Equal(t, "5", s.form.seed.seed.Text)

	// Discard: the job keeps its settings and the draft comes back.
	s.form.prompts.prompt.SetText("thrown away")
	test.Tap(e.discard)
	assert.False(t, e.bar.Visible())
	assert.Equal(t, "my unfinished draft", s.form.prompts.prompt.Text)
	assert.Equal(t, []string{"a queued harbour"}, waitingPrompts(t, st))

	// Save: every feature of the form reaches the job.
	s.x.tabs.SelectIndex(tabQueue)
	test.Tap(s.row(t, id).edit)
	f, x := s.form, s.form
	f.prompts.prompt.SetText("an edited harbour")
	f.sampling.scheduler.SetSelected("DPM++ 2M")
	x.sampling.schedule.SetSelected("Karras")
	f.batch.batchSize.SetSelected("2")
	test.Tap(x.lora.add)
	require.Len(t, x.lora.rows, 1)
	x.lora.rows[0].path.SetText(request.TinyLoRA)
	x.lora.rows[0].weight.SetText("0.5")
	test.Tap(e.save)
	s.q.drain()
	assert.False(t, e.bar.Visible())
	assert.Contains(t, s.status.text.Text, fmt.Sprintf("Saved queued job #%d", id))
	assert.Equal(t, "my unfinished draft", s.form.prompts.prompt.Text, "the draft comes back after saving")
	j, err := st.GetQueueJob(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, "an edited harbour", j.Request.Prompt)
	assert.Equal(t, "dpmpp_2m", j.Request.Scheduler)
	assert.Equal(t, "karras", j.Request.Schedule)
	assert.Equal(t, 2, j.Request.BatchSize)
	assert.Equal(t, []request.LoRA{{Path: request.TinyLoRA, Weight: 0.5}}, j.Request.LoRAs)
	assert.Equal(t, int64(5), j.Request.Seed)

	// A job that starts while it is being edited keeps its settings; the form keeps the changes.
	s.x.tabs.SelectIndex(tabQueue)
	test.Tap(s.row(t, id).edit)
	f.prompts.prompt.SetText("too late")
	claimed, err := st.ClaimNext(ctx)
	require.NoError(t, err)
	require.Equal(t, id, claimed.ID)
	test.Tap(e.save)
	s.q.drain()
	assert.Contains(t, s.status.text.Text, fmt.Sprintf("Job #%d started before it was saved", id))
	assert.Equal(t, "too late", f.prompts.prompt.Text, "the form keeps the changes")
	assert.False(t, e.bar.Visible())
	j, err = st.GetQueueJob(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, "an edited harbour", j.Request.Prompt)
}

// TestGenerateSaysItWaitsForTheQueuedJob: with one worker, Generate during a
// queue job waits; the status line says for which job until its own starts.
func TestGenerateSaysItWaitsForTheQueuedJob(t *testing.T) {
	begin, end := make(chan struct{}), make(chan struct{})
	gen := &fakeGen{run: func(ctx context.Context, req request.Request, onEvent func(event)) (*jobs.JobOutcome, error) {
		<-begin // the queue's job holds the worker
		onEvent(event{kind: evProgress, stage: "denoising", step: 1, total: req.Steps})
		<-end
		return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "stopped by the test"}
	}}
	s, st, _ := servicesStudio(t, gen, nil)
	ctx := context.Background()
	require.NoError(t, st.SetQueuePaused(ctx, true)) // the test plays the queue runner
	setForm(s, "a lighthouse", 4, 64, 64)
	s.form.batch.batchCount.SetText("2")
	test.Tap(s.x.addQueue)
	s.form.batch.batchCount.SetText("1")
	claim := func() *store.QueueJob {
		j, err := st.ClaimNext(ctx)
		require.NoError(t, err)
		require.NotNil(t, j)
		return j
	}
	first := claim()
	s.OnQueueEvent(jobs.QueueEvent{Kind: jobs.QueueStarted, Job: first})
	s.q.drain()
	test.Tap(s.generate)
	s.q.drain()
	assert.Equal(t, fmt.Sprintf("Waiting for the queued job #%d to finish (one worker)…", first.ID), s.status.text.Text)

	// The next queue job took the worker first: the line follows it.
	s.OnQueueEvent(jobs.QueueEvent{Kind: jobs.QueueFinished, Job: first})
	second := claim()
	s.OnQueueEvent(jobs.QueueEvent{Kind: jobs.QueueStarted, Job: second})
	s.q.drain()
	assert.Equal(t, fmt.Sprintf("Waiting for the queued job #%d to finish (one worker)…", second.ID), s.status.text.Text)

	close(begin)
	s.waitFor(t, 20*time.Second, "the job to start", func() bool { return s.status.text.Text == "Generating…" })
	close(end)
	s.waitFor(t, 20*time.Second, "the job to end", func() bool { return s.job == nil })

	// Without a queue job running, Generate says nothing of waiting.
	s.OnQueueEvent(jobs.QueueEvent{Kind: jobs.QueueFinished, Job: second})
	s.q.drain()
	begin, end = make(chan struct{}), make(chan struct{})
	test.Tap(s.generate)
	s.q.drain()
	assert.Equal(t, "Generating…", s.status.text.Text)
	close(begin)
	close(end)
	s.waitFor(t, 20*time.Second, "the second job to end", func() bool { return s.job == nil })
}

// The viewer follows the queue's results: a finished queue job's image
// replaces a cancelled job's preview, without a click in Recent.
func TestViewerFollowsQueueResults(t *testing.T) {
	s, st, _ := servicesStudio(t, nil, nil)
	dir := t.TempDir()
	older := recordImage(t, st, dir, "an older image", "tiny", 1)
	s.refreshHistory()
	s.waitFor(t, 20*time.Second, "the history", func() bool { return s.view.shown != nil })
	require.Equal(t, older.Path, s.view.shown.Path)

	// A cancelled job left its last preview in the viewer.
	s.view.img.File, s.view.img.Image = "", image.NewNRGBA(image.Rect(0, 0, 8, 8))
	s.view.title.SetText("Preview")

	newer := recordImage(t, st, dir, "a queued lighthouse", "tiny", 2)
	job := &store.QueueJob{JobRecord: store.JobRecord{ID: 7, Status: store.StatusDone}}
	s.OnQueueEvent(jobs.QueueEvent{Kind: jobs.QueueFinished, Job: job})
	s.waitFor(t, 20*time.Second, "the viewer to show the queue's image", func() bool {
		return s.view.shown != nil && s.view.shown.Path == newer.Path && s.view.img.File == newer.Path
	})
	assert.Equal(t, "a queued lighthouse", s.view.title.Text)
}

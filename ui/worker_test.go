package ui

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/bridge"
	"atelier/core/jobs"
	"atelier/core/paths"
	"atelier/core/request"
	"atelier/core/store"
)

// These tests drive the studio through the real stack: core.Runner, a
// store.Store in a temporary SQLite file, the bridge and the Python worker with
// the tiny model. They need ATELIER_PYTHON and ATELIER_WORKER_DIR (make test
// sets them).

// jobDeadline is generous: the first job starts the worker (importing torch)
// and may build the tiny model, on a CPU shared with other builds.
const jobDeadline = 5 * time.Minute

var shared struct {
	once   sync.Once
	bridge *bridge.Bridge
	cache  string
	err    error
}

// sharedBridge starts one worker for the package: every test pays for its own
// store and runner, not for another torch import.
func sharedBridge(t *testing.T) *bridge.Bridge {
	t.Helper()
	if os.Getenv(bridge.EnvPython) == "" || os.Getenv(bridge.EnvWorkerDir) == "" {
		if testing.Short() {
			t.Skip("-short: no worker")
		}
		t.Fatalf("%s and %s must name the venv's python and the repository's python folder (make test sets them)",
			bridge.EnvPython, bridge.EnvWorkerDir)
	}
	shared.once.Do(func() {
		// The tiny model is generated into this cache once for the package.
		shared.cache, shared.err = os.MkdirTemp("", "atelier-ui-test-cache")
		shared.bridge = bridge.New(bridge.Config{CacheDir: shared.cache,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	})
	require.NoError(t, shared.err)
	return shared.bridge
}

func TestMain(m *testing.M) {
	// The model folders of other apps on this machine stay out of the tests;
	// TestOtherAppsModelFoldersJoinTheLibrary gives a home of its own.
	otherAppsHome = func() (string, error) { return "", errors.New("no home in tests") }
	code := m.Run()
	if shared.bridge != nil {
		shared.bridge.Close()
	}
	if shared.cache != "" {
		os.RemoveAll(shared.cache)
	}
	os.Exit(code)
}

// realStudio is a studio over a real runner and store in a temporary home.
func realStudio(t *testing.T) (testStudio, *store.Store) {
	t.Helper()
	br := sharedBridge(t)
	paths := paths.PathsUnder(t.TempDir())
	require.NoError(t, paths.EnsureDirs())
	st, err := store.OpenStore(paths.DB)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	runner := jobs.NewRunner(st, br, paths)
	s := newTestStudio(t, eventsOf(runner), st)
	t.Cleanup(func() { s.settle(t) }) // before the store closes
	return s, st
}

func jobCount(t *testing.T, st *store.Store) int {
	t.Helper()
	jobs, err := st.ListJobs(context.Background(), 100)
	require.NoError(t, err)
	return len(jobs)
}

func TestRealGenerateShowsImageAndGrowsHistory(t *testing.T) {
	s, st := realStudio(t)
	s.waitFor(t, 10*time.Second, "the first history load", func() bool { return s.historyLoaded() })
	before := s.strip.len()

	setForm(s, "a lighthouse at dusk", 3, 64, 64)
	test.Tap(s.generate)
	require.True(t, s.cancel.Visible() && !s.cancel.Disabled(), "Cancel is offered while the job runs")
	s.waitFor(t, jobDeadline, "the job to finish", func() bool { return s.job == nil })

	require.Equal(t, statusDone, s.status.kind, "status: %s", s.status.text.Text)
	recent, err := st.RecentImages(context.Background(), 1)
	require.NoError(t, err)
	require.Len(t, recent, 1, "the runner recorded the image")
	assert.Equal(t, recent[0].Path, s.view.img.File, "the viewer shows the file the job wrote")
	assert.FileExists(t, s.view.img.File)
	assert.Contains(t, s.view.info.Text, fmt.Sprintf("seed %d", recent[0].Seed))
	assert.Contains(t, s.view.info.Text, "64 × 64")
	assert.True(t, s.cancel.Disabled())

	s.waitFor(t, 10*time.Second, "the history strip to grow by one", func() bool { return s.strip.len() == before+1 })
	assert.Equal(t, recent[0].Path, s.strip.items[0].Path)

	// "img2img" on the result starts the next job from it, through the real worker.
	require.False(t, s.view.toInit.Disabled())
	test.Tap(s.view.toInit)
	assert.Equal(t, recent[0].Path, s.form.img2img.initImage.Text)
	s.form.prompts.prompt.SetText("the same lighthouse at night")
	test.Tap(s.generate)
	s.waitFor(t, jobDeadline, "the img2img job to finish", func() bool { return s.job == nil })
	require.Equal(t, statusDone, s.status.kind, "status: %s", s.status.text.Text)
	jobs, err := st.ListJobs(context.Background(), 1)
	require.NoError(t, err)
	require.Len(t, jobs, 1)
	assert.Equal(t, recent[0].Path, jobs[0].Request.InitImage)
	assert.Equal(t, request.DefaultStrength, jobs[0].Request.Strength)

	// "Upscale" enlarges the shown result: no model, the source's settings kept.
	shown := s.view.shown
	require.NotNil(t, shown)
	require.False(t, s.view.upscale.Disabled())
	test.Tap(s.view.upscale)
	s.waitFor(t, jobDeadline, "the upscale to finish", func() bool { return s.job == nil })
	require.Equal(t, statusDone, s.status.kind, "status: %s", s.status.text.Text)
	up, err := st.RecentImages(context.Background(), 1)
	require.NoError(t, err)
	require.Len(t, up, 1)
	assert.Equal(t, [2]int{2 * shown.Width, 2 * shown.Height}, [2]int{up[0].Width, up[0].Height})
	assert.Equal(t, up[0].Path, s.view.img.File, "the viewer shows the enlarged image")
	jobs, err = st.ListJobs(context.Background(), 1)
	require.NoError(t, err)
	assert.True(t, jobs[0].Request.UpscaleOnly)
	assert.Equal(t, shown.Path, jobs[0].Request.InitImage)
	assert.Equal(t, "the same lighthouse at night", jobs[0].Request.Prompt, "the source's prompt is kept")
}

func TestRealInvalidFormRunsNoJob(t *testing.T) {
	cases := []struct {
		name, field, want string
		edit              func(f *form)
	}{
		{"steps 0", fSteps, "Steps must be between 1 and 150, got 0", func(f *form) { f.steps.steps.SetText("0") }},
		{"width 63", fWidth, "Width must be a multiple of 8 between 64 and 4096, got 63", func(f *form) { f.size.width.SetText("63") }},
		{"empty prompt", fPrompt, "Prompt must not be empty", func(f *form) { f.prompts.prompt.SetText("") }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, st := realStudio(t)
			setForm(s, "valid", 2, 64, 64)
			c.edit(s.form)
			test.Tap(s.generate)
			s.q.drain()

			assert.Equal(t, c.want, s.form.fieldError(c.field), "the message is beside the field")
			assert.Nil(t, s.job, "no job is running")
			assert.False(t, s.generate.Disabled())
			assert.Equal(t, statusError, s.status.kind)
			assert.Equal(t, 0, jobCount(t, st), "no job was recorded")
		})
	}
}

func TestRealModelNotFoundIsShownBesideModel(t *testing.T) {
	s, st := realStudio(t)
	setForm(s, "valid", 2, 64, 64)
	s.form.model.entry.SetText(t.TempDir() + "/no-such-model")
	test.Tap(s.generate)
	s.waitFor(t, 30*time.Second, "the job to be refused", func() bool { return s.job == nil })

	assert.Contains(t, s.form.fieldError(fModel), "does not exist")
	assert.Contains(t, s.status.text.Text, "does not exist")
	assert.Equal(t, 0, jobCount(t, st), "a missing model is refused before a job is recorded")
}

func TestRealCancelEndsCancelled(t *testing.T) {
	s, st := realStudio(t)
	// Long enough that it cannot finish between the first step and the cancel.
	setForm(s, "a long job", request.MaxSteps, 256, 256)
	test.Tap(s.generate)
	s.waitFor(t, jobDeadline, "denoising to start", func() bool {
		if s.job == nil {
			t.Fatalf("the job ended before denoising: %s", s.status.text.Text)
		}
		p, _ := s.job.snapshot()
		return p.Stage == "denoising" && p.Step >= 1
	})
	test.Tap(s.cancel)
	s.waitFor(t, time.Minute, "the job to end", func() bool { return s.job == nil })

	assert.Equal(t, statusWarn, s.status.kind, "status: %s", s.status.text.Text)
	assert.Contains(t, s.status.text.Text, "Cancelled")
	assert.Contains(t, s.barLabel.Text, "Cancelled at")
	jobs, err := st.ListJobs(context.Background(), 10)
	require.NoError(t, err)
	require.Len(t, jobs, 1)
	assert.Equal(t, store.StatusCancelled, jobs[0].Status)
	assert.False(t, s.generate.Disabled(), "a new job can start")
}

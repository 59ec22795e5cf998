package ui

import (
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/bridge"
	"atelier/core/jobs"
	"atelier/core/paths"
	"atelier/core/store"
)

// warmStudio is a studio over a bridge of its own, whose start-up stages go
// to the studio as in the app.
func warmStudio(t *testing.T, cfg bridge.Config) (testStudio, *bridge.Bridge) {
	t.Helper()
	var s testStudio
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.OnStarting = func(m string) { s.WorkerStarting(m) }
	br := bridge.New(cfg)
	t.Cleanup(func() { br.Close() })
	home := paths.PathsUnder(t.TempDir())
	require.NoError(t, home.EnsureDirs())
	st, err := store.OpenStore(home.DB)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	s = newTestStudio(t, eventsOf(jobs.NewRunner(st, br, home)), st)
	t.Cleanup(func() { s.settle(t) })
	return s, br
}

func TestRealWorkerStartsWhenTheStudioOpensAndNamesEachStage(t *testing.T) {
	sharedBridge(t) // the environment, and the tiny model's cache
	s, br := warmStudio(t, bridge.Config{CacheDir: shared.cache})
	s.WarmUp(br.Start)

	seen := map[string]bool{}
	s.waitFor(t, jobDeadline, "the worker to be ready", func() bool {
		seen[s.barLabel.Text] = true
		return s.warm.done
	})
	require.NoError(t, s.warm.err)
	var named []string
	for _, st := range s.warm.stages {
		named = append(named, st.name)
	}
	require.Contains(t, named, "launching Python")
	require.Contains(t, named, "importing torch", "the worker's own loading line")
	assert.Equal(t, statusDone, s.status.kind)
	assert.Contains(t, s.status.text.Text, "Worker ready (")
	assert.Contains(t, s.status.text.Text, "third button by Model", "a library with only the demo model says how to get a real one")
	assert.Contains(t, s.status.detail, "importing torch", "Details lists the stages")
	assert.Equal(t, "Ready · Ctrl+Enter generates", s.barLabel.Text)
	assert.False(t, s.barBusy.Visible())
	shownStage := false
	for text := range seen {
		if strings.Contains(text, "Starting the worker — launching Python") || strings.Contains(text, "Starting the worker — importing torch") {
			shownStage = true
		}
	}
	assert.True(t, shownStage, "a stage was named under the buttons; saw %v", seen)
	_, ok := br.Hello()
	require.True(t, ok, "the worker said hello before any job")

	// The first Generate finds the worker ready: no start-up stage comes again.
	stages := len(s.warm.stages)
	setForm(s, "a lighthouse", 2, 64, 64)
	test.Tap(s.generate)
	s.waitFor(t, jobDeadline, "the job to finish", func() bool { return s.job == nil })
	assert.Equal(t, statusDone, s.status.kind, "status: %s", s.status.text.Text)
	assert.Len(t, s.warm.stages, stages, "the job started no worker")
}

func TestWorkerThatCannotStartSaysWhyAndGenerateStaysOffered(t *testing.T) {
	s, br := warmStudio(t, bridge.Config{Python: filepath.Join(t.TempDir(), "no-python"), WorkerDir: t.TempDir()})
	s.WarmUp(br.Start)
	s.waitFor(t, time.Minute, "the start to fail", func() bool { return s.warm.done })

	assert.Equal(t, statusError, s.status.kind)
	assert.Contains(t, s.status.text.Text, "The worker did not start. The worker's Python")
	assert.Contains(t, s.status.text.Text, "no-python")
	assert.Equal(t, "Worker not started · Generate tries again", s.barLabel.Text)
	assert.False(t, s.generate.Disabled())
	assert.False(t, s.barBusy.Visible())
}

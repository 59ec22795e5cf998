package ui

import (
	"context"
	"testing"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/paths"
	"atelier/core/store"
)

// storeUnder opens a history store in a temporary folder, closed at the end.
func storeUnder(t *testing.T) (*store.Store, paths.Paths) {
	t.Helper()
	p := paths.PathsUnder(t.TempDir())
	require.NoError(t, p.EnsureDirs())
	st, err := store.OpenStore(p.DB)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st, p
}

func TestRelaunchShowsTheFormAsItWasAtClose(t *testing.T) {
	st, p := storeUnder(t)
	// A window closed here, not by the test's cleanup (closing one twice panics).
	s := studioIn(t, st, p, nil, nil, func() fyne.Window { return test.NewWindow(nil) })
	setForm(s, "typed, never generated", 7, 64, 64)
	s.form.size.width.SetText("12") // half-typed: no valid width yet
	s.win.Close()

	again := studioOver(t, st, p, nil, nil)
	assert.Equal(t, "typed, never generated", again.form.prompts.prompt.Text)
	assert.Equal(t, "7", again.form.steps.steps.Text)
	assert.Equal(t, "12", again.form.size.width.Text)
}

func TestKilledAppKeepsThePromptTypedAfterAGenerate(t *testing.T) {
	st, p := storeUnder(t)
	s := studioOver(t, st, p, nil, nil)
	setForm(s, "the generated one", 5, 64, 64)
	test.Tap(s.generate)
	s.waitFor(t, 20*time.Second, "the job to end", func() bool { return s.job == nil })

	test.Type(s.form.prompts.prompt, ", then more")
	s.form.steps.steps.SetText("11")
	// The window is never closed, as when the app is killed: the edits are
	// in the store once the form's writes have landed.
	s.waitFor(t, 20*time.Second, "the edited form in the store", func() bool {
		r, ok, err := st.LastRequest(context.Background())
		return err == nil && ok && r.Steps == 11
	})

	again := studioOver(t, st, p, nil, nil)
	assert.Equal(t, "the generated one, then more", again.form.prompts.prompt.Text)
	assert.Equal(t, "11", again.form.steps.steps.Text)
}

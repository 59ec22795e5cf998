package ui

import (
	"testing"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
)

// The set-up screen and the download panel show their progress and their
// failures through one block: a bar, a stage, and what happened / what to do.
func TestTaskProgressShowsStagesAndFailures(t *testing.T) {
	test.NewTempApp(t)
	p := newTaskProgress(false)
	w := test.NewTempWindow(t, p.box)
	w.Resize(fyne.NewSize(400, 300))
	empty := p.box.MinSize().Height
	assert.False(t, p.bar.Visible())
	assert.Zero(t, empty, "nothing yet, no room taken")

	p.begin("Starting…")
	assert.True(t, p.bar.Visible())
	assert.Equal(t, "Starting…", p.stage.Text)
	p.step(0.4, "Downloading torch")
	p.step(-1, "Downloading torch (still)")
	assert.Equal(t, 0.4, p.bar.Value, "an unknown share keeps the bar")

	p.fail("No network.", "connect, or set up from a folder of wheels", "pip: ConnectionError", false)
	assert.False(t, p.bar.Visible())
	assert.False(t, p.stage.Visible(), "the stage line goes")
	assert.Equal(t, "No network.", p.problem.Text)
	assert.Equal(t, "What to do: connect, or set up from a folder of wheels", p.todo.Text)
	assert.True(t, p.detail.Visible())

	p.begin("Starting…")
	assert.False(t, p.problem.Visible(), "a new attempt clears the failure")
	assert.False(t, p.todo.Visible())
	p.succeed("Done")
	assert.Equal(t, 1.0, p.bar.Value)
}

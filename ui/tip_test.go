package ui

import (
	"testing"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The icon-only buttons say what they do while the pointer is over them, and
// the tip leaves the button its clicks.
func TestIconButtonsHaveTips(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	c := s.win.Canvas()
	l := tipLayers[c]
	require.NotNil(t, l)
	center := func(o fyne.CanvasObject) fyne.Position {
		return absPos(o).Add(fyne.NewPos(o.Size().Width/2, o.Size().Height/2))
	}
	for _, b := range []*tipButton{s.form.model.browse, s.form.model.file, s.form.model.addFolder, s.form.seed.dice, s.form.size.swap} {
		test.MoveMouse(c, center(b))
		assert.NotEmpty(t, b.tip)
		assert.Equal(t, b.tip, l.shown)
		assert.True(t, l.tip.Visible())
		assert.GreaterOrEqual(t, l.tip.Position().Y, absPos(b).Y+b.Size().Height, "under the button")
	}
	assert.Equal(t, "Add a folder of models to the library", s.form.model.addFolder.tip)

	test.MoveMouse(c, center(s.form.size.swap))
	s.form.size.width.SetText("64")
	s.form.size.height.SetText("96")
	test.TapCanvas(c, center(s.form.size.swap))
	assert.Equal(t, "96", s.form.size.width.Text, "a click at the button reaches it")
	assert.False(t, l.tip.Visible(), "and the tip goes")

	test.MoveMouse(c, center(s.form.size.swap))
	test.MoveMouse(c, center(s.form.prompts.prompt))
	assert.False(t, l.tip.Visible(), "the tip goes when the pointer leaves")
}

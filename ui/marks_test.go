package ui

import (
	"testing"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An error below the fold scrolls the form to it, and the banner that points
// at the marked fields goes once they are fixed.
func TestMarkedFieldBelowTheFoldIsShownAndTheBannerGoes(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	setForm(s, "a lighthouse", 4, 64, 64)
	s.q.drain()
	sc := s.formScroll
	sc.ScrollToTop()
	s.form.hires.scale.SetText("2")
	s.form.hires.steps.SetText("many")
	test.Tap(s.generate)
	require.NotEmpty(t, s.form.fieldError(fHiresSteps))
	require.True(t, s.status.box.Visible())
	assert.Contains(t, s.status.text.Text, "Fix the marked fields")

	d := fyne.CurrentApp().Driver()
	y := d.AbsolutePositionForObject(s.form.hires.steps).Y - d.AbsolutePositionForObject(sc.Content).Y
	assert.Positive(t, sc.Offset.Y, "the form scrolled")
	assert.GreaterOrEqual(t, y, sc.Offset.Y, "the marked field is in view")
	assert.LessOrEqual(t, y+s.form.hires.steps.Size().Height, sc.Offset.Y+sc.Size().Height, "the marked field is in view")

	s.form.hires.steps.SetText("4")
	assert.False(t, s.status.box.Visible(), "the banner goes with the last mark")

	// A status about something else stays when a mark is cleared.
	s.form.hires.steps.SetText("many")
	test.Tap(s.generate)
	s.status.set(statusInfo, "Queued job 1.", "")
	s.form.hires.steps.SetText("4")
	assert.True(t, s.status.box.Visible())
}

package ui

import (
	"context"
	"strings"
	"testing"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// absPos is where o is drawn in its window.
func absPos(o fyne.CanvasObject) fyne.Position {
	return fyne.CurrentApp().Driver().AbsolutePositionForObject(o)
}

// relayout lays the window out again from the top, as the app's driver does
// each frame when a minimum size changed; the test canvas never does.
func relayout(o fyne.CanvasObject) {
	if !o.Visible() {
		return
	}
	switch x := o.(type) {
	case *fyne.Container:
		if x.Layout != nil {
			x.Layout.Layout(x.Objects, x.Size())
		}
		for _, c := range x.Objects {
			relayout(c)
		}
	case fyne.Widget:
		r := test.WidgetRenderer(x)
		r.Layout(x.Size())
		for _, c := range r.Objects() {
			relayout(c)
		}
	}
}

// The action area keeps its size whatever the status says: three clicks at
// one spot on "Add to queue" queue three jobs, and Generate stays put while
// the progress bar comes and goes.
func TestActionAreaDoesNotMove(t *testing.T) {
	s, st, _ := servicesStudio(t, nil, nil)
	require.NoError(t, st.SetQueuePaused(context.Background(), true))
	setForm(s, "a lighthouse", 1, 64, 64)
	s.q.drain()
	c := s.win.Canvas()
	gen, add := absPos(s.generate), absPos(s.x.addQueue)
	spot := add.Add(fyne.NewPos(s.x.addQueue.Size().Width/2, s.x.addQueue.Size().Height/2))
	for range 3 {
		test.TapCanvas(c, spot)
		s.q.drain()
		relayout(c.Content())
	}
	assert.Len(t, waitingPrompts(t, st), 3, "each click at the same spot queues a job")

	s.status.set(statusError, strings.Repeat("A long message that wraps over several lines. ", 12), "detail")
	s.bar.Show()
	s.barLabel.SetText("Step 3/20 · 1.2 s")
	relayout(c.Content())
	t.Logf("before %v %v after %v %v", gen, add, absPos(s.generate), absPos(s.x.addQueue))
	assert.Equal(t, gen, absPos(s.generate), "Generate stays where it was")
	assert.Equal(t, add, absPos(s.x.addQueue), "Add to queue stays where it was")
	s.bar.Hide()
	s.barBusy.Show()
	s.status.set(statusDone, "Done", "")
	relayout(c.Content())
	assert.Equal(t, gen, absPos(s.generate))
	assert.Equal(t, add, absPos(s.x.addQueue))
}

// The wheel scrolls the form wherever the pointer is over it, fields
// included; a prompt longer than its box scrolls its own text first.
func TestWheelOverFieldsScrollsTheForm(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	s.q.drain()
	c := s.win.Canvas()
	center := func(o fyne.CanvasObject) fyne.Position {
		return absPos(o).Add(fyne.NewPos(o.Size().Width/2, o.Size().Height/2))
	}
	for name, field := range map[string]fyne.CanvasObject{
		"prompt":          s.form.prompts.prompt,
		"model drop-down": s.form.model.entry,
		"steps":           s.form.steps.steps,
		"negative prompt": s.form.prompts.negative,
	} {
		s.formScroll.ScrollToTop()
		test.Scroll(c, center(field), 0, -30)
		assert.Positive(t, s.formScroll.Offset.Y, "the wheel over the %s scrolls the form", name)
	}

	s.formScroll.ScrollToTop()
	s.form.prompts.prompt.SetText(strings.Repeat("a line of the prompt\n", 40))
	relayout(c.Content())
	router := s.formRouter
	wheel := &fyne.ScrollEvent{Scrolled: fyne.NewDelta(0, -30)}
	wheel.AbsolutePosition = center(s.form.prompts.prompt)
	router.Scrolled(wheel)
	assert.Zero(t, s.formScroll.Offset.Y, "a long prompt scrolls its text first")
	for range 100 {
		router.Scrolled(wheel)
	}
	assert.Positive(t, s.formScroll.Offset.Y, "and the form once the text is at its end")
}

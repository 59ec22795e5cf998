package ui

import (
	"context"
	"testing"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/jobs"
	"atelier/core/request"
)

// pressKey delivers a key as the desktop driver does: to the focused widget,
// else to the canvas. Tab and Shift+Tab move the focus unless the focused
// widget takes tabs itself.
func pressKey(c fyne.Canvas, name fyne.KeyName, shift bool) {
	ev := &fyne.KeyEvent{Name: name}
	if name == fyne.KeyTab {
		if tb, ok := c.Focused().(fyne.Tabbable); !ok || !tb.AcceptsTab() {
			if shift {
				c.FocusPrevious()
			} else {
				c.FocusNext()
			}
			return
		}
	}
	if f := c.Focused(); f != nil {
		f.TypedKey(ev)
	} else if h := c.OnTypedKey(); h != nil {
		h(ev)
	}
}

func TestTabLeavesThePromptAndShiftTabComesBack(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	c := s.win.Canvas()
	prompt := s.form.prompts.prompt
	prompt.SetText("")
	c.Focus(prompt)
	test.Type(prompt, "a lighthouse")
	pressKey(c, fyne.KeyTab, false)
	assert.Equal(t, "a lighthouse", prompt.Text, "Tab types no tab into the prompt")
	require.NotEqual(t, prompt, c.Focused(), "Tab moves the focus on")
	pressKey(c, fyne.KeyTab, true)
	assert.Equal(t, prompt, c.Focused(), "Shift+Tab comes back to the prompt")
}

func TestEscCancelsTheRunAndClosesPopUps(t *testing.T) {
	started := make(chan struct{})
	gen := &fakeGen{run: func(ctx context.Context, req request.Request, on func(event)) (*jobs.JobOutcome, error) {
		close(started)
		<-ctx.Done()
		return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "the job was cancelled"}
	}}
	s := newTestStudio(t, gen, &memHistory{})
	c := s.win.Canvas()
	setForm(s, "long", 60, 64, 64)

	// With the prompt focused, as after Ctrl+Enter.
	c.Focus(s.form.prompts.prompt)
	s.Generate()
	<-started
	// The first Esc leaves the prompt, as in every field; the next one is the window's.
	pressKey(c, fyne.KeyEscape, false)
	assert.Nil(t, c.Focused(), "Esc leaves the prompt")
	s.q.drain()
	require.NotNil(t, s.job, "Esc in a field does not cancel the run")
	pressKey(c, fyne.KeyEscape, false)
	s.waitFor(t, 10*time.Second, "the job to end", func() bool { return s.job == nil })
	assert.Contains(t, s.status.text.Text, "Cancelled")

	// A pop-up closes first; nothing focused, as after a click on a button.
	c.Unfocus()
	s.status.set(statusError, "It failed", "a traceback")
	test.Tap(s.status.details)
	require.NotNil(t, c.Overlays().Top(), "Details opens a pop-up")
	pressKey(c, fyne.KeyEscape, false)
	assert.Nil(t, c.Overlays().Top(), "Esc closes it")
}

func TestEscInPathFieldsAndDropDownsLeavesThemAndKeepsTheRun(t *testing.T) {
	started := make(chan struct{})
	gen := &fakeGen{run: func(ctx context.Context, req request.Request, on func(event)) (*jobs.JobOutcome, error) {
		close(started)
		<-ctx.Done()
		return nil, &failure.JobError{Code: failure.ErrCancelled, Message: "the job was cancelled"}
	}}
	s := newTestStudio(t, gen, &memHistory{})
	c := s.win.Canvas()
	setForm(s, "long", 60, 64, 64)
	s.Generate()
	<-started
	for _, f := range []string{fInitImage, fVAE, fRefiner, fUpscaler} {
		s.form.openSectionOf(f)
	}

	fields := map[string]fyne.Focusable{
		"init image": s.form.img2img.initImage,
		"mask":       s.form.img2img.mask,
		"model":      s.form.model.entry,
		"VAE":        s.form.vae.vae,
		"refiner":    s.form.refiner.refiner,
		"upscaler":   s.form.upscale.upscaler,
		"steps":      s.form.steps.steps,
	}
	for name, f := range fields {
		c.Focus(f)
		require.Equal(t, f, c.Focused(), name)
		test.Type(f, "x")
		pressKey(c, fyne.KeyEscape, false)
		assert.Nil(t, c.Focused(), "Esc leaves the %s field", name)
		s.q.drain()
		assert.NotNil(t, s.job, "Esc in the %s field keeps the run", name)
	}

	// An open drop-down list closes on Esc, and the run goes on.
	test.Tap(s.form.model.entry.ActionItem.(fyne.Tappable))
	top := c.Overlays().Top()
	require.NotNil(t, top, "the model's list is open")
	pressKey(c, fyne.KeyEscape, false)
	assert.False(t, top.Visible(), "Esc closes the list")
	s.q.drain()
	assert.NotNil(t, s.job, "closing the list keeps the run")

	pressKey(c, fyne.KeyEscape, false) // nothing focused: the window's Esc
	s.waitFor(t, 10*time.Second, "the job to end", func() bool { return s.job == nil })
	assert.Contains(t, s.status.text.Text, "Cancelled")
}

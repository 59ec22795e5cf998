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

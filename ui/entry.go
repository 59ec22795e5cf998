package ui

import (
	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/driver/desktop"
	"fyne.io/fyne/v2/widget"
)

// submitEntry is an Entry that runs onSubmit on Ctrl+Enter (Cmd+Enter on macOS).
// A focused widget receives shortcuts instead of the canvas, so the window-level
// shortcut alone would never fire while the user is typing a prompt.
type submitEntry struct {
	widget.Entry
	onSubmit func()
	onEscape func()
	rend     fyne.WidgetRenderer // kept so the wheel router can find the text's scroller
}

// CreateRenderer implements fyne.Widget.
func (e *submitEntry) CreateRenderer() fyne.WidgetRenderer {
	e.rend = e.Entry.CreateRenderer()
	return e.rend
}

// textScroll is the scroller of the entry's text, or nil before the entry is
// drawn or when it has none.
func (e *submitEntry) textScroll() fyne.CanvasObject {
	if e.rend == nil {
		return nil
	}
	for _, o := range e.rend.Objects() {
		if _, ok := o.(fyne.Scrollable); ok && o.Visible() {
			return o
		}
	}
	return nil
}

func newSubmitEntry(multiLine bool, onSubmit func()) *submitEntry {
	e := &submitEntry{onSubmit: onSubmit}
	e.MultiLine = multiLine
	if multiLine {
		e.Wrapping = fyne.TextWrapWord
	}
	// Errors set by the form stay visible (red border and icon) until the user
	// edits the field, even though the entry has no Validator of its own.
	e.AlwaysShowValidationError = true
	e.ExtendBaseWidget(e)
	return e
}

// AcceptsTab implements fyne.Tabbable: Tab moves on to the next field and
// Shift+Tab back, in the prompts too (a tab character means nothing to the model).
func (e *submitEntry) AcceptsTab() bool { return false }

// TypedKey implements fyne.Focusable: Esc is the window's (cancel the run),
// since a focused widget gets keys instead of the canvas.
func (e *submitEntry) TypedKey(k *fyne.KeyEvent) {
	if k.Name == fyne.KeyEscape && e.onEscape != nil {
		e.onEscape()
		return
	}
	e.Entry.TypedKey(k)
}

// TypedShortcut implements fyne.Shortcutable.
func (e *submitEntry) TypedShortcut(s fyne.Shortcut) {
	if isSubmitShortcut(s) {
		if e.onSubmit != nil {
			e.onSubmit()
		}
		return
	}
	e.Entry.TypedShortcut(s)
}

// submitShortcuts are Ctrl+Return and Ctrl+keypad Enter.
var submitShortcuts = []*desktop.CustomShortcut{
	{KeyName: fyne.KeyReturn, Modifier: fyne.KeyModifierShortcutDefault},
	{KeyName: fyne.KeyEnter, Modifier: fyne.KeyModifierShortcutDefault},
}

func isSubmitShortcut(s fyne.Shortcut) bool {
	for _, sc := range submitShortcuts {
		if s.ShortcutName() == sc.ShortcutName() {
			return true
		}
	}
	return false
}

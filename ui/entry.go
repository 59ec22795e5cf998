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

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

// TypedKey implements fyne.Focusable: Esc leaves the field, as in every
// field of the form (leaveOnEscape).
func (e *submitEntry) TypedKey(k *fyne.KeyEvent) {
	if !leaveOnEscape(e, k) {
		e.Entry.TypedKey(k)
	}
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

// leaveOnEscape is what Esc does in a field of the form: it leaves the field,
// so the keyboard is the window's again, where the next Esc closes a dialog or
// cancels the run. An open drop-down list has the focus itself, and Fyne
// closes it on Esc. It reports whether k was Esc.
func leaveOnEscape(obj fyne.CanvasObject, k *fyne.KeyEvent) bool {
	if k.Name != fyne.KeyEscape {
		return false
	}
	if c := fyne.CurrentApp().Driver().CanvasForObject(obj); c != nil {
		c.Unfocus()
	}
	return true
}

// pathEnd keeps the end of a path field's text in view while the user is not
// typing in it: a long path starts with folders that every file shares, and
// the file's name, the part that tells fields apart, is at its end.
type pathEnd struct{ focused bool }

// showEnd scrolls e to the end of its text, unless the user is typing in it.
func (p *pathEnd) showEnd(e *widget.Entry) {
	if p.focused {
		return
	}
	e.CursorRow, e.CursorColumn = 0, len([]rune(e.Text))
	e.Refresh()
}

// onChange sets what an edit of the field does; a new text shows its end.
func (p *pathEnd) onChange(e *widget.Entry, f func(string)) {
	e.OnChanged = func(s string) {
		p.showEnd(e)
		if f != nil {
			f(s)
		}
	}
}

// escEntry is a one-line entry (a path) that Esc leaves.
type escEntry struct {
	widget.Entry
	pathEnd
}

func newEscEntry() *escEntry {
	e := &escEntry{}
	e.Wrapping = fyne.TextWrap(fyne.TextTruncateClip)
	e.ExtendBaseWidget(e)
	return e
}

// TypedKey implements fyne.Focusable.
func (e *escEntry) TypedKey(k *fyne.KeyEvent) {
	if !leaveOnEscape(e, k) {
		e.Entry.TypedKey(k)
	}
}

// FocusGained implements fyne.Focusable.
func (e *escEntry) FocusGained() { e.focused = true; e.Entry.FocusGained() }

// FocusLost implements fyne.Focusable: the field shows its file name again.
func (e *escEntry) FocusLost() {
	e.Entry.FocusLost()
	e.focused = false
	e.showEnd(&e.Entry)
}

// SetText implements the entry's SetText, showing the new text's end.
func (e *escEntry) SetText(s string) { e.Entry.SetText(s); e.showEnd(&e.Entry) }

// Resize implements fyne.CanvasObject: a field laid out anew shows its end.
func (e *escEntry) Resize(s fyne.Size) { e.Entry.Resize(s); e.showEnd(&e.Entry) }

// changed sets what an edit of the field does.
func (e *escEntry) changed(f func(string)) { e.onChange(&e.Entry, f) }

// escSelectEntry is an editable drop-down (a model or a path) that Esc leaves.
type escSelectEntry struct {
	widget.SelectEntry
	pathEnd
}

func newEscSelectEntry(options []string) *escSelectEntry {
	e := &escSelectEntry{}
	e.Wrapping = fyne.TextWrap(fyne.TextTruncateClip)
	e.ExtendBaseWidget(e)
	e.SetOptions(options)
	return e
}

// TypedKey implements fyne.Focusable.
func (e *escSelectEntry) TypedKey(k *fyne.KeyEvent) {
	if !leaveOnEscape(e, k) {
		e.SelectEntry.TypedKey(k)
	}
}

// FocusGained implements fyne.Focusable.
func (e *escSelectEntry) FocusGained() { e.focused = true; e.SelectEntry.FocusGained() }

// FocusLost implements fyne.Focusable: the field shows its file name again.
func (e *escSelectEntry) FocusLost() {
	e.SelectEntry.FocusLost()
	e.focused = false
	e.showEnd(&e.Entry)
}

// Resize implements fyne.CanvasObject: a field laid out anew shows its end.
func (e *escSelectEntry) Resize(s fyne.Size) { e.SelectEntry.Resize(s); e.showEnd(&e.Entry) }

// changed sets what an edit of the field does; a choice from the list, which
// sets the text without SetText of ours, shows its end too.
func (e *escSelectEntry) changed(f func(string)) { e.onChange(&e.Entry, f) }

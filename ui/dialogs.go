package ui

import (
	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/layout"
	"fyne.io/fyne/v2/widget"
	nativedialog "github.com/sqweek/dialog"
)

// confirmDialog is a modal yes/no question. (Fyne's dialog package would
// pull in another module for its file dialogs; this needs only a pop-up.)
type confirmDialog struct {
	pop *widget.PopUp
	yes *widget.Button
	no  *widget.Button
	ok  func()
}

// Confirm answers yes, as the button does.
func (d *confirmDialog) Confirm() {
	d.pop.Hide()
	d.ok()
}

// Dismiss answers no.
func (d *confirmDialog) Dismiss() { d.pop.Hide() }

func (d *confirmDialog) SetConfirmText(s string) { d.yes.SetText(s) }

func (d *confirmDialog) SetConfirmImportance(i widget.Importance) {
	d.yes.Importance = i
	d.yes.Refresh()
}

func confirm(w fyne.Window, title, message string, yes func()) *confirmDialog {
	d := &confirmDialog{ok: yes}
	d.yes = widget.NewButton("Yes", d.Confirm)
	d.yes.Importance = widget.HighImportance
	d.no = widget.NewButton("Cancel", d.Dismiss)
	msg := widget.NewLabel(message)
	msg.Wrapping = fyne.TextWrapWord
	body := container.NewBorder(heading(title), container.NewHBox(layout.NewSpacer(), d.no, d.yes), nil, nil, msg)
	d.pop = newModal(container.NewPadded(container.NewGridWrap(fyne.NewSize(420, 130), body)), w.Canvas())
	d.pop.Show()
	return d
}

// modals are each window's modal pop-ups, newest last, so that Esc can
// close the one on top. UI goroutine only.
var modals = map[fyne.Canvas][]*widget.PopUp{}

// newModal is widget.NewModalPopUp for a pop-up that Esc closes.
func newModal(content fyne.CanvasObject, c fyne.Canvas) *widget.PopUp {
	pop := widget.NewModalPopUp(content, c)
	open := modals[c][:0]
	for _, p := range modals[c] {
		if p.Visible() {
			open = append(open, p)
		}
	}
	modals[c] = append(open, pop)
	return pop
}

// closeTopModal hides the newest modal pop-up shown on c; it reports false
// when none is shown.
func closeTopModal(c fyne.Canvas) bool {
	for i := len(modals[c]) - 1; i >= 0; i-- {
		if p := modals[c][i]; p.Visible() {
			p.Hide()
			return true
		}
	}
	return false
}

// chooseFolderNative is the native folder dialog.
func chooseFolderNative(title string) (string, error) {
	dir, err := nativedialog.Directory().Title(title).Browse()
	if err == nativedialog.ErrCancelled {
		return "", nil
	}
	return dir, err
}

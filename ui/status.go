package ui

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/layout"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"
)

type statusKind int

const (
	statusInfo statusKind = iota
	statusDone
	statusWarn
	statusError
)

// statusLine says what happened and what to do, with the technical detail
// (worker stderr, traceback) one click away rather than in the user's face.
type statusLine struct {
	win     fyne.Window
	kind    statusKind
	icon    *widget.Icon
	text    *widget.Label
	details *widget.Button
	detail  string
	box     *fyne.Container
	// pointsAtMarks: the status only says to fix the marked fields, so it
	// goes when they are fixed.
	pointsAtMarks bool
}

// hide takes the status away.
func (st *statusLine) hide() {
	st.pointsAtMarks = false
	st.box.Hide()
}

func newStatusLine(win fyne.Window) *statusLine {
	st := &statusLine{win: win, icon: widget.NewIcon(nil), text: widget.NewLabel("")}
	st.text.Wrapping = fyne.TextWrapWord
	st.details = widget.NewButton("Details", st.showDetail)
	st.details.Importance = widget.LowImportance
	st.details.Hide()
	st.box = container.NewBorder(nil, nil, container.NewVBox(st.icon), container.NewVBox(st.details), st.text)
	st.box.Hide()
	return st
}

// statusLines is how many lines of status the area shows before it scrolls.
const statusLines = 2

// content is the status in an area of fixed height: a message that grows or
// appears must not move the buttons above it under the user's pointer.
func (st *statusLine) content() fyne.CanvasObject {
	probe := widget.NewLabel(strings.Repeat("\n", statusLines-1))
	area := container.NewVScroll(st.box)
	area.SetMinSize(fyne.NewSize(0, probe.MinSize().Height))
	return area
}

func (st *statusLine) set(kind statusKind, text, detail string) {
	st.kind, st.detail = kind, detail
	st.pointsAtMarks = false
	switch kind {
	case statusDone:
		st.icon.SetResource(theme.NewSuccessThemedResource(theme.ConfirmIcon()))
		st.text.Importance = widget.SuccessImportance
	case statusWarn:
		st.icon.SetResource(theme.NewWarningThemedResource(theme.WarningIcon()))
		st.text.Importance = widget.WarningImportance
	case statusError:
		st.icon.SetResource(theme.NewErrorThemedResource(theme.ErrorIcon()))
		st.text.Importance = widget.DangerImportance
	default:
		st.icon.SetResource(theme.InfoIcon())
		st.text.Importance = widget.MediumImportance
	}
	st.text.SetText(text)
	if detail != "" {
		st.details.Show()
	} else {
		st.details.Hide()
	}
	st.box.Show()
}

// showDetail shows the detail in a modal pop-up (selectable, for bug reports).
func (st *statusLine) showDetail() {
	body := widget.NewLabel(st.detail)
	body.TextStyle = fyne.TextStyle{Monospace: true}
	body.Selectable = true
	scroll := container.NewScroll(body)
	scroll.SetMinSize(fyne.NewSize(640, 320))
	var pop *widget.PopUp
	closeBtn := widget.NewButton("Close", func() { pop.Hide() })
	pop = newModal(container.NewBorder(heading("Details"),
		container.NewHBox(layout.NewSpacer(), closeBtn), nil, nil, scroll), st.win.Canvas())
	pop.Show()
}

// sentence capitalises a message for display on its own.
func sentence(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	if n == 0 {
		return s
	}
	return string(unicode.ToUpper(r)) + s[n:]
}

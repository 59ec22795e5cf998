package ui

import (
	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"
)

// showMarked shows an error about the marked fields and scrolls the form to
// the first of them, which may be far below the fold. A message that only
// points at the marks (onlyMarks) goes once the last mark is fixed.
func (s *Studio) showMarked(msg string, onlyMarks bool) {
	s.status.set(statusError, msg, "")
	s.status.pointsAtMarks = onlyMarks
	s.scrollToFirstMark()
}

// marksGone runs when an edit fixed the last marked field.
func (s *Studio) marksGone() {
	if s.status.pointsAtMarks {
		s.status.hide()
	}
}

// scrollToFirstMark scrolls the form so that the topmost marked field, with
// its caption, is in view; a field already in view does not move the form.
func (s *Studio) scrollToFirstMark() {
	sc := s.formScroll
	if sc == nil || sc.Content == nil {
		return
	}
	sc.Refresh() // a section just opened for an error has changed the form's height
	ff := s.form.fields
	found := false
	var top, bottom float32
	for _, name := range ff.marked() {
		var o fyne.CanvasObject = ff.errs[name]
		if e, ok := ff.entries[name]; ok && e.Visible() {
			o = e
		}
		y, ok := offsetIn(sc.Content, o)
		if ok && (!found || y < top) {
			found, top, bottom = true, y, y+o.Size().Height+ff.errs[name].Size().Height
		}
	}
	if !found {
		return
	}
	caption := 2 * theme.TextSize() // the field's caption above its widget
	view := sc.Size().Height
	if top-caption >= sc.Offset.Y && bottom <= sc.Offset.Y+view {
		return
	}
	sc.ScrollToOffset(fyne.NewPos(sc.Offset.X, max(0, top-caption)))
}

// offsetIn is how far below the top of root the target lies, through the
// form's containers and the accordion's open sections. (The driver's absolute
// position knows an object only once it has been drawn, and a section opened
// for the error has not been yet.)
func offsetIn(root, target fyne.CanvasObject) (float32, bool) {
	if sameObject(root, target) {
		return 0, true
	}
	if !root.Visible() {
		return 0, false
	}
	var children []fyne.CanvasObject
	switch x := root.(type) {
	case *fyne.Container:
		children = x.Objects
	case *container.ThemeOverride:
		children = []fyne.CanvasObject{x.Content}
	case *widget.Accordion:
		for _, it := range x.Items {
			if it.Open && it.Detail != nil {
				children = append(children, it.Detail)
			}
		}
	}
	for _, c := range children {
		if y, ok := offsetIn(c, target); ok {
			return c.Position().Y + y, true
		}
	}
	return 0, false
}

// sameObject says whether o is target, or the entry that target is the
// widget.Entry of (the form keeps entries by that pointer).
func sameObject(o, target fyne.CanvasObject) bool {
	switch x := o.(type) {
	case *submitEntry:
		return target == fyne.CanvasObject(&x.Entry) || o == target
	case *widget.SelectEntry:
		return target == fyne.CanvasObject(&x.Entry) || o == target
	case *escSelectEntry:
		return target == fyne.CanvasObject(&x.Entry) || o == target
	case *escEntry:
		return target == fyne.CanvasObject(&x.Entry) || o == target
	}
	return o == target
}

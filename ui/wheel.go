package ui

import (
	"reflect"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/widget"
)

// wheelRouter lies over the form's scroll and takes every wheel event over
// it. Fyne hands a wheel event to the innermost scrollable under the pointer,
// and every Entry and SelectEntry holds a scroller of its own that keeps the
// event even when it has nothing to scroll: in a form made mostly of fields,
// the wheel would hardly ever move the form.
type wheelRouter struct {
	widget.BaseWidget
	form *container.Scroll
	// texts are the multi-line entries: a text longer than its box scrolls
	// first, and the form once the text is at its end.
	texts []*submitEntry
}

func newWheelRouter(form *container.Scroll, texts ...*submitEntry) *wheelRouter {
	w := &wheelRouter{form: form, texts: texts}
	w.ExtendBaseWidget(w)
	return w
}

// overForm lays the router over the form's scroll.
func (w *wheelRouter) overForm() fyne.CanvasObject { return container.NewStack(w.form, w) }

func (w *wheelRouter) CreateRenderer() fyne.WidgetRenderer {
	return widget.NewSimpleRenderer(container.NewWithoutLayout())
}

// Scrolled implements fyne.Scrollable.
func (w *wheelRouter) Scrolled(ev *fyne.ScrollEvent) {
	d := fyne.CurrentApp().Driver()
	for _, e := range w.texts {
		at := d.AbsolutePositionForObject(e)
		size := e.Size()
		p := ev.AbsolutePosition
		if !e.Visible() || p.X < at.X || p.Y < at.Y || p.X >= at.X+size.Width || p.Y >= at.Y+size.Height {
			continue
		}
		if sc := e.textScroll(); sc != nil && canScroll(sc, ev.Scrolled) {
			sc.(fyne.Scrollable).Scrolled(ev)
			return
		}
		break
	}
	w.form.Scrolled(ev)
}

// canScroll says whether a scroller has room to move its content by d. Its
// type is Fyne's internal one, so the offset and content are read by name; a
// scroller without them is given the event, as Fyne itself would.
func canScroll(sc fyne.CanvasObject, d fyne.Delta) bool {
	v := reflect.ValueOf(sc)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return true
	}
	offV, contentV := v.Elem().FieldByName("Offset"), v.Elem().FieldByName("Content")
	if !offV.IsValid() || !offV.CanInterface() || !contentV.IsValid() || !contentV.CanInterface() {
		return true
	}
	off, okOff := offV.Interface().(fyne.Position)
	content, okContent := contentV.Interface().(fyne.CanvasObject)
	if !okOff || !okContent || content == nil {
		return true
	}
	room := content.MinSize().Subtract(sc.Size())
	const eps = 0.5
	switch {
	case d.DY < 0: // the content moves up: scrolling down
		return off.Y < room.Height-eps
	case d.DY > 0:
		return off.Y > eps
	case d.DX < 0:
		return off.X < room.Width-eps
	case d.DX > 0:
		return off.X > eps
	}
	return false
}

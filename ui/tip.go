package ui

import (
	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/canvas"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/driver/desktop"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"
)

// tipButton is an icon-only button that says what it does while the pointer
// is over it. (Fyne has no tooltips; a pop-up would take the pointer's events
// from the button, so the tip is drawn on a layer that takes none.)
type tipButton struct {
	widget.Button
	tip string
}

func newTipButton(icon fyne.Resource, tip string, tapped func()) *tipButton {
	b := &tipButton{tip: tip}
	b.Icon, b.OnTapped = icon, tapped
	b.ExtendBaseWidget(b)
	return b
}

// MouseIn implements desktop.Hoverable.
func (b *tipButton) MouseIn(e *desktop.MouseEvent) {
	b.Button.MouseIn(e)
	if l := tipLayerOf(b); l != nil {
		l.show(b.tip, b)
	}
}

// MouseOut implements desktop.Hoverable.
func (b *tipButton) MouseOut() {
	b.Button.MouseOut()
	if l := tipLayerOf(b); l != nil {
		l.hide()
	}
}

// Tapped implements fyne.Tappable: the tip goes, as the action happens.
func (b *tipButton) Tapped(e *fyne.PointEvent) {
	if l := tipLayerOf(b); l != nil {
		l.hide()
	}
	b.Button.Tapped(e)
}

// tipLayer lies over a window's content and holds the one tip shown. It is
// made of plain canvas objects, which take no pointer events.
type tipLayer struct {
	layer *fyne.Container
	tip   *fyne.Container
	text  *canvas.Text
	bg    *canvas.Rectangle
	shown string
}

// tipLayers are the windows' tip layers, by canvas. UI goroutine only.
var tipLayers = map[fyne.Canvas]*tipLayer{}

// withTips puts a tip layer over a window's content and returns the new content.
func withTips(c fyne.Canvas, content fyne.CanvasObject) fyne.CanvasObject {
	l := &tipLayer{text: canvas.NewText("", theme.Color(theme.ColorNameForeground))}
	l.text.TextSize = theme.CaptionTextSize()
	l.bg = canvas.NewRectangle(theme.Color(theme.ColorNameOverlayBackground))
	l.bg.StrokeColor = theme.Color(theme.ColorNameInputBorder)
	l.bg.StrokeWidth = 1
	l.bg.CornerRadius = theme.InputRadiusSize()
	l.tip = container.NewWithoutLayout(l.bg, l.text)
	l.tip.Hide()
	l.layer = container.NewWithoutLayout(l.tip)
	tipLayers[c] = l
	return container.NewStack(content, l.layer)
}

func tipLayerOf(o fyne.CanvasObject) *tipLayer {
	if c := fyne.CurrentApp().Driver().CanvasForObject(o); c != nil {
		return tipLayers[c]
	}
	return nil
}

// show draws text under the anchor, kept inside the window.
func (l *tipLayer) show(text string, anchor fyne.CanvasObject) {
	if text == "" {
		return
	}
	pad := theme.InnerPadding() / 2
	l.text.Text = text
	l.text.Refresh()
	size := l.text.MinSize().AddWidthHeight(2*pad, 2*pad)
	l.bg.Resize(size)
	l.text.Move(fyne.NewPos(pad, pad))
	l.tip.Resize(size)
	d := fyne.CurrentApp().Driver()
	at := d.AbsolutePositionForObject(anchor).Subtract(d.AbsolutePositionForObject(l.layer))
	pos := fyne.NewPos(at.X, at.Y+anchor.Size().Height+pad)
	if w := l.layer.Size().Width; pos.X+size.Width > w {
		pos.X = max(0, w-size.Width)
	}
	if h := l.layer.Size().Height; pos.Y+size.Height > h {
		pos.Y = max(0, at.Y-size.Height-pad) // no room below: above the button
	}
	l.tip.Move(pos)
	l.shown = text
	l.tip.Show()
	l.layer.Refresh()
}

func (l *tipLayer) hide() {
	l.shown = ""
	l.tip.Hide()
}

package ui

import (
	"fmt"
	"image/color"
	"math"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/canvas"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"
)

const (
	zoomStep = 1.25 // one wheel notch, or one press of + or −
	zoomMin  = 0.05
	zoomMax  = 16.0
)

// zoomView is the viewer's picture: fitted to the stage, or zoomed around the
// pointer with the wheel (or + and −, or the buttons), at 1:1 (one image
// pixel to one screen pixel), and dragged to pan when it is larger than the
// stage, as in the image views of AUTOMATIC1111, InvokeAI and Fooocus. UI
// goroutine only.
type zoomView struct {
	img    *canvas.Image
	pic    *zoomPic          // over the stage: takes the wheel, drags, double-clicks
	scroll *container.Scroll // clips the zoomed picture and holds the pan
	stage  fyne.CanvasObject // the scroller with pic over it
	px     fyne.Size         // the image's size in pixels; zero before one
	zoom   float32           // screen pixels per image pixel; 0: fit the stage

	out, in *tipButton
	actual  *widget.Button // "1:1", or "Fit" while zoomed
	label   *widget.Label  // the scale shown: "Fit · 42%", "200%"
	bar     *fyne.Container
}

func newZoomView(img *canvas.Image) *zoomView {
	z := &zoomView{img: img}
	z.pic = &zoomPic{z: z}
	z.pic.ExtendBaseWidget(z.pic)
	// The picture is plain canvas, which takes no events: a widget as large
	// as the zoomed image would take the clicks meant for the tabs and buttons
	// around the stage (Fyne clips the drawing of a scroller's content, not
	// its events). pic, the stage's size, takes them instead.
	z.scroll = container.NewScroll(img)
	z.stage = container.NewStack(z.scroll, z.pic)
	z.out = newTipButton(theme.ZoomOutIcon(), "Zoom out (- or the wheel)", func() { z.zoomBy(1/zoomStep, z.center()) })
	z.in = newTipButton(theme.ZoomInIcon(), "Zoom in (+ or the wheel)", func() { z.zoomBy(zoomStep, z.center()) })
	z.actual = widget.NewButton("1:1", z.toggle)
	z.label = widget.NewLabel("")
	z.label.SizeName = theme.SizeNameCaptionText
	for _, b := range []*widget.Button{&z.out.Button, &z.in.Button, z.actual} {
		b.Importance = widget.LowImportance
	}
	// The controls lie over the picture's corner: a backing of the stage's
	// colour keeps them readable over any image.
	back := canvas.NewRectangle(color.NRGBA{R: canvasBg.R, G: canvasBg.G, B: canvasBg.B, A: 0xd8})
	back.CornerRadius = 8
	z.bar = container.NewStack(back, container.NewHBox(z.label, z.out, z.in, z.actual))
	z.update()
	return z
}

// setPixels tells the view the size of the image it shows; another size
// than before starts fitted again, the same keeps the zoom and the pan (to
// compare images of one batch at 1:1).
func (z *zoomView) setPixels(w, h int) {
	px := fyne.NewSize(float32(w), float32(h))
	if px != z.px {
		z.px, z.zoom = px, 0
		z.layout()
	}
	z.update()
}

// canvasScale is the screen pixels per Fyne unit of the canvas.
func (z *zoomView) canvasScale() float32 {
	if c := fyne.CurrentApp().Driver().CanvasForObject(z.scroll); c != nil && c.Scale() > 0 {
		return c.Scale()
	}
	return 1
}

// fitZoom is the scale at which the image fits the stage.
func (z *zoomView) fitZoom() float32 {
	view := z.scroll.Size()
	if z.px.Width <= 0 || z.px.Height <= 0 || view.Width <= 0 || view.Height <= 0 {
		return 1
	}
	return float32(math.Min(float64(view.Width/z.px.Width), float64(view.Height/z.px.Height))) * z.canvasScale()
}

// shownZoom is the scale the image is drawn at now.
func (z *zoomView) shownZoom() float32 {
	if z.zoom == 0 {
		return z.fitZoom()
	}
	return z.zoom
}

// center is the middle of the stage, where the buttons and keys zoom.
func (z *zoomView) center() fyne.Position {
	s := z.scroll.Size()
	return fyne.NewPos(s.Width/2, s.Height/2)
}

// zoomBy scales the picture by f, keeping the image point under at (a
// position in the stage) where it is.
func (z *zoomView) zoomBy(f float32, at fyne.Position) {
	if z.px.Width <= 0 {
		return
	}
	old := z.shownZoom()
	next := min(max(old*f, zoomMin), zoomMax)
	z.setZoom(next, at, old)
}

// setZoom shows the picture at scale next (0: fit), keeping the image point
// under at in place.
func (z *zoomView) setZoom(next float32, at fyne.Position, old float32) {
	// The image point under the pointer, in image pixels. Units are the
	// canvas's: zoom/scale of them to an image pixel; a picture smaller than
	// the stage is centred in it.
	cs := z.canvasScale()
	off, m := z.scroll.Offset, z.margin(old)
	pt := fyne.NewPos((off.X+at.X-m.X)*cs/old, (off.Y+at.Y-m.Y)*cs/old)
	if next != 0 && math.Abs(float64(next-z.fitZoom())) < 1e-3 {
		next = 0 // back at the fitted size: follow the stage again
	}
	z.zoom = next
	z.layout()
	if next != 0 {
		m = z.margin(next)
		z.scroll.ScrollToOffset(fyne.NewPos(pt.X*next/cs+m.X-at.X, pt.Y*next/cs+m.Y-at.Y))
	}
	z.update()
}

// margin is the space around a picture at zoom that is smaller than the stage.
func (z *zoomView) margin(zoom float32) fyne.Position {
	view, s := z.scroll.Size(), zoom/z.canvasScale()
	return fyne.NewPos(max(0, (view.Width-z.px.Width*s)/2), max(0, (view.Height-z.px.Height*s)/2))
}

// toggle switches between the fitted picture and 1:1.
func (z *zoomView) toggle() {
	if z.px.Width <= 0 {
		return
	}
	if z.zoom == 0 {
		z.setZoom(1, z.center(), z.shownZoom())
	} else {
		z.setZoom(0, z.center(), z.shownZoom())
	}
}

// pan moves the zoomed picture by d (a drag).
func (z *zoomView) pan(d fyne.Delta) {
	if z.zoom == 0 {
		return
	}
	off := z.scroll.Offset
	z.scroll.ScrollToOffset(fyne.NewPos(off.X-d.DX, off.Y-d.DY))
}

// layout sizes the picture for the zoom: the stage's size when fitted, the
// zoomed image's size (the scroller clips it) otherwise.
func (z *zoomView) layout() {
	size := fyne.NewSize(0, 0)
	if z.zoom != 0 && z.px.Width > 0 {
		s := z.zoom / z.canvasScale()
		size = fyne.NewSize(z.px.Width*s, z.px.Height*s)
	}
	z.img.SetMinSize(size)
	z.scroll.Refresh()
	if z.zoom == 0 {
		z.scroll.ScrollToOffset(fyne.NewPos(0, 0))
	}
}

// update writes the scale and enables the buttons that can act.
func (z *zoomView) update() {
	has := z.px.Width > 0
	z.bar.Hidden = !has
	switch {
	case !has:
		z.label.SetText("")
	case z.zoom == 0:
		z.label.SetText(fmt.Sprintf("Fit · %.0f%%", 100*z.fitZoom()))
	default:
		z.label.SetText(fmt.Sprintf("%.0f%%", 100*z.zoom))
	}
	if z.zoom == 0 {
		z.actual.SetText("1:1")
	} else {
		z.actual.SetText("Fit")
	}
	for _, b := range []fyne.Disableable{z.out, z.in, z.actual} {
		if has {
			b.Enable()
		} else {
			b.Disable()
		}
	}
}

// zoomPic lies over the stage, which it fills, and draws nothing: it takes
// the wheel (zoom), a drag (pan) and a double-click (fit ↔ 1:1).
type zoomPic struct {
	widget.BaseWidget
	z *zoomView
}

func (p *zoomPic) CreateRenderer() fyne.WidgetRenderer {
	return widget.NewSimpleRenderer(canvas.NewRectangle(color.Transparent))
}

// Scrolled implements fyne.Scrollable: the wheel zooms around the pointer.
func (p *zoomPic) Scrolled(e *fyne.ScrollEvent) {
	if e.Scrolled.DY == 0 {
		return
	}
	f := float32(zoomStep)
	if e.Scrolled.DY < 0 {
		f = 1 / zoomStep
	}
	p.z.zoomBy(f, e.Position)
}

// Dragged implements fyne.Draggable: a drag pans the zoomed picture.
func (p *zoomPic) Dragged(e *fyne.DragEvent) { p.z.pan(e.Dragged) }

// DragEnd implements fyne.Draggable.
func (p *zoomPic) DragEnd() {}

// DoubleTapped implements fyne.DoubleTappable: fit ↔ 1:1.
func (p *zoomPic) DoubleTapped(*fyne.PointEvent) { p.z.toggle() }

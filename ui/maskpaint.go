package ui

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	_ "image/jpeg" // init images may be JPEG
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/canvas"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"
)

// maskPainter is a brush over the init image: dragging or tapping paints the
// mask (white = repaint) at the image's own size, shown as a red overlay.
type maskPainter struct {
	widget.BaseWidget

	base    image.Image
	mask    *image.Gray   // 255 where painted
	overlay *image.NRGBA  // what is shown over the image
	brush   float32       // radius in image pixels
	baseImg *canvas.Image // the init image
	overImg *canvas.Image // the overlay
	erase   bool          // the brush clears instead of painting
}

var overlayColor = color.NRGBA{R: 0xe0, G: 0x30, B: 0x30, A: 0x90}

func newMaskPainter(base image.Image) *maskPainter {
	b := base.Bounds()
	p := &maskPainter{
		base:    base,
		mask:    image.NewGray(image.Rect(0, 0, b.Dx(), b.Dy())),
		overlay: image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy())),
		brush:   float32(max(2, min(b.Dx(), b.Dy())/16)),
	}
	p.baseImg = canvas.NewImageFromImage(base)
	p.baseImg.FillMode = canvas.ImageFillContain
	p.overImg = canvas.NewImageFromImage(p.overlay)
	p.overImg.FillMode = canvas.ImageFillContain
	p.ExtendBaseWidget(p)
	return p
}

func (p *maskPainter) CreateRenderer() fyne.WidgetRenderer {
	return widget.NewSimpleRenderer(container.NewStack(p.baseImg, p.overImg))
}

func (p *maskPainter) MinSize() fyne.Size { return fyne.NewSize(256, 256) }

// Dragged implements fyne.Draggable: the brush follows the pointer.
func (p *maskPainter) Dragged(e *fyne.DragEvent) { p.paintAt(e.Position) }

// DragEnd implements fyne.Draggable.
func (p *maskPainter) DragEnd() {}

// Tapped implements fyne.Tappable: one dab of the brush.
func (p *maskPainter) Tapped(e *fyne.PointEvent) { p.paintAt(e.Position) }

// imagePoint maps a position on the widget to image pixels, through the
// "contain" fit the images are drawn with.
func (p *maskPainter) imagePoint(pos fyne.Position) (float32, float32, float32, bool) {
	size := p.Size()
	b := p.mask.Bounds()
	iw, ih := float32(b.Dx()), float32(b.Dy())
	if size.Width <= 0 || size.Height <= 0 || iw == 0 || ih == 0 {
		return 0, 0, 0, false
	}
	scale := min(size.Width/iw, size.Height/ih)
	ox, oy := (size.Width-iw*scale)/2, (size.Height-ih*scale)/2
	x, y := (pos.X-ox)/scale, (pos.Y-oy)/scale
	return x, y, scale, x >= -p.brush && y >= -p.brush && x < iw+p.brush && y < ih+p.brush
}

// paintAt dabs the brush at a widget position.
func (p *maskPainter) paintAt(pos fyne.Position) {
	cx, cy, _, ok := p.imagePoint(pos)
	if !ok {
		return
	}
	p.dab(cx, cy)
	p.overImg.Refresh()
}

// dab paints (or erases) a disc of the brush's radius at image coordinates.
func (p *maskPainter) dab(cx, cy float32) {
	b := p.mask.Bounds()
	r := p.brush
	for y := max(0, int(cy-r)); y <= min(b.Dy()-1, int(cy+r)); y++ {
		for x := max(0, int(cx-r)); x <= min(b.Dx()-1, int(cx+r)); x++ {
			dx, dy := float32(x)+0.5-cx, float32(y)+0.5-cy
			if dx*dx+dy*dy > r*r {
				continue
			}
			if p.erase {
				p.mask.SetGray(x, y, color.Gray{})
				p.overlay.SetNRGBA(x, y, color.NRGBA{})
			} else {
				p.mask.SetGray(x, y, color.Gray{Y: 255})
				p.overlay.SetNRGBA(x, y, overlayColor)
			}
		}
	}
}

// clear erases the whole mask.
func (p *maskPainter) clear() {
	draw.Draw(p.mask, p.mask.Bounds(), image.Black, image.Point{}, draw.Src)
	draw.Draw(p.overlay, p.overlay.Bounds(), image.Transparent, image.Point{}, draw.Src)
	p.overImg.Refresh()
}

// load starts from an existing mask of the same size (brighter than mid-grey = painted).
func (p *maskPainter) load(m image.Image) bool {
	b := m.Bounds()
	if b.Dx() != p.mask.Bounds().Dx() || b.Dy() != p.mask.Bounds().Dy() {
		return false
	}
	for y := 0; y < b.Dy(); y++ {
		for x := 0; x < b.Dx(); x++ {
			if color.GrayModel.Convert(m.At(b.Min.X+x, b.Min.Y+y)).(color.Gray).Y >= 128 {
				p.mask.SetGray(x, y, color.Gray{Y: 255})
				p.overlay.SetNRGBA(x, y, overlayColor)
			}
		}
	}
	p.overImg.Refresh()
	return true
}

// painted counts the painted pixels.
func (p *maskPainter) painted() int {
	n := 0
	for _, v := range p.mask.Pix {
		if v != 0 {
			n++
		}
	}
	return n
}

// save writes the mask as a PNG into dir, through a temporary file and a
// rename, and returns its path.
func (p *maskPainter) save(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, ".mask-*.png")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if err := png.Encode(tmp, p.mask); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	path := filepath.Join(dir, fmt.Sprintf("mask-%s.png", time.Now().Format("20060102-150405.000000000")))
	return path, os.Rename(tmp.Name(), path)
}

// maskPainterWindow is the window the painter opens in, with its tools.
type maskPainterWindow struct {
	win     fyne.Window
	painter *maskPainter
	size    *widget.Slider
	eraser  *widget.Check
	clear   *widget.Button
	use     *widget.Button
	cancel  *widget.Button
	status  *widget.Label
}

// openPainter opens the mask painter over the init image; "Use mask" writes
// the mask and puts its path into the mask field.
func (s *img2imgSection) openPainter() {
	path := strings.TrimSpace(s.initImage.Text)
	if path == "" {
		s.fields.showErrorText(fMask, "Choose an init image first: the mask is painted over it.")
		return
	}
	base, err := decodeImageFile(path)
	if err != nil {
		s.fields.showErrorText(fInitImage, fmt.Sprintf("Init image %s cannot be read: %v", path, err))
		return
	}
	w := &maskPainterWindow{painter: newMaskPainter(base)}
	if m := strings.TrimSpace(s.mask.Text); m != "" {
		if img, err := decodeImageFile(m); err == nil {
			w.painter.load(img)
		}
	}
	w.win = fyne.CurrentApp().NewWindow("Paint the mask: red is repainted")
	w.size = widget.NewSlider(1, 128)
	w.size.SetValue(float64(w.painter.brush))
	w.size.OnChanged = func(v float64) { w.painter.brush = float32(v) }
	w.eraser = widget.NewCheck("Eraser", func(on bool) { w.painter.erase = on })
	w.clear = widget.NewButtonWithIcon("Clear", theme.ContentClearIcon(), w.painter.clear)
	w.status = widget.NewLabel("")
	w.status.Importance = widget.DangerImportance
	w.cancel = widget.NewButton("Cancel", func() { w.win.Close() })
	w.use = widget.NewButtonWithIcon("Use mask", theme.ConfirmIcon(), func() {
		if w.painter.painted() == 0 {
			w.status.SetText("Paint the area to repaint first.")
			return
		}
		p, err := w.painter.save(s.maskDir)
		if err != nil {
			w.status.SetText("The mask could not be saved: " + err.Error())
			return
		}
		s.mask.SetText(p)
		s.fields.clearError(fMask)
		w.win.Close()
	})
	w.use.Importance = widget.HighImportance
	tools := container.NewBorder(nil, w.status, container.NewHBox(caption("Brush"), widget.NewLabel("")),
		container.NewHBox(w.eraser, w.clear, w.cancel, w.use), w.size)
	w.win.SetContent(container.NewBorder(nil, tools, nil, nil, w.painter))
	b := base.Bounds()
	scale := float32(512) / float32(max(b.Dx(), b.Dy()))
	w.win.Resize(fyne.NewSize(max(420, float32(b.Dx())*scale), float32(b.Dy())*scale+90))
	s.painter = w
	w.win.Show()
}

func decodeImageFile(path string) (image.Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, _, err := image.Decode(f)
	return img, err
}

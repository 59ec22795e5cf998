package ui

import (
	"image"
	"image/color"
	"os"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/canvas"
	"fyne.io/fyne/v2/container"
	"github.com/disintegration/imaging"
)

const pathThumbSize = 36

// pathThumb is the small picture beside an image path field (init image,
// mask): the file the path names, so that a path is seen to be the right
// picture. The file is decoded and shrunk off the UI goroutine; a path that
// names no image shows nothing. UI goroutine only, but for the decoding.
type pathThumb struct {
	img  *canvas.Image
	box  *fyne.Container
	do   func(func())
	path string // the path asked for last; an older decode that ends later is dropped
	// row is the field's row, laid out again when the picture comes or goes.
	row *fyne.Container
}

func newPathThumb(do func(func())) *pathThumb {
	p := &pathThumb{do: do, img: &canvas.Image{FillMode: canvas.ImageFillContain, ScaleMode: canvas.ImageScaleSmooth}}
	bg := canvas.NewRectangle(canvasBg)
	bg.CornerRadius = 4
	space := canvas.NewRectangle(color.Transparent)
	space.SetMinSize(fyne.NewSquareSize(pathThumbSize))
	p.box = container.NewStack(space, bg, p.img)
	p.box.Hide()
	return p
}

// show shows the picture at path, or nothing when it is none.
func (p *pathThumb) show(path string) {
	path = strings.TrimSpace(path)
	if path == p.path {
		return
	}
	p.path = path
	if path == "" {
		p.set(nil)
		return
	}
	go func() {
		var thumb image.Image
		if st, err := os.Stat(path); err == nil && st.Mode().IsRegular() {
			if img, err := imaging.Open(path); err == nil {
				thumb = imaging.Fit(img, 2*pathThumbSize, 2*pathThumbSize, imaging.Linear)
			}
		}
		p.do(func() {
			if p.path == path {
				p.set(thumb)
			}
		})
	}()
}

func (p *pathThumb) set(img image.Image) {
	p.img.Image = img
	p.img.Refresh()
	visible := img != nil
	if p.box.Visible() != visible {
		p.box.Hidden = !visible
		p.box.Refresh()
		if p.row != nil {
			p.row.Refresh()
		}
	}
}

// shown says whether a picture is shown (for the tests).
func (p *pathThumb) shown() bool { return p.box.Visible() && p.img.Image != nil }

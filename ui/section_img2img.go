package ui

import (
	"path/filepath"
	"strconv"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core/paths"
	"atelier/core/request"
)

// img2imgSection is the init image and its denoising strength, and the
// inpainting mask (from a file or painted) with its blur and padding.
type img2imgSection struct {
	fields         *formFields
	initImage      *escEntry
	strength       *submitEntry
	strengthSlider *widget.Slider
	mask           *escEntry
	// initThumb and maskThumb show the pictures the paths name.
	initThumb, maskThumb *pathThumb
	paintMask            *widget.Button
	maskBlur             *submitEntry
	maskPadding          *submitEntry
	// maskDir is where painted masks are written.
	maskDir string
	// painter is the open mask painter, if any.
	painter *maskPainterWindow
}

func newImg2imgSection(ff *formFields) *img2imgSection {
	s := &img2imgSection{fields: ff, maskDir: filepath.Join(paths.DefaultPaths().Cache, "masks")}
	s.initImage = ff.pathEntry(fInitImage, "an image to start from (img2img)")
	s.initThumb = newPathThumb(ff.do)
	s.initImage.changed(func(t string) { ff.clearError(fInitImage); ff.edited(); s.thumbs() })
	s.strength = ff.entry(fStrength, false)
	s.strengthSlider = widget.NewSlider(0.05, 1)
	s.strengthSlider.Step = 0.05
	ff.linkSlider(fStrength, s.strength, s.strengthSlider, formatHundredths)
	s.mask = ff.pathEntry(fMask, "none; white = repaint")
	s.maskThumb = newPathThumb(ff.do)
	s.mask.changed(func(t string) { ff.clearError(fMask); ff.edited(); s.thumbs() })
	s.paintMask = widget.NewButtonWithIcon("Paint…", theme.ColorPaletteIcon(), s.openPainter)
	s.maskBlur = ff.entry(fMaskBlur, false)
	s.maskPadding = ff.entry(fMaskPadding, false)
	return s
}

// thumbs shows the init image and the mask beside their fields.
func (s *img2imgSection) thumbs() {
	s.initThumb.show(s.initImage.Text)
	s.maskThumb.show(s.mask.Text)
}

func (s *img2imgSection) owns(field string) bool {
	switch field {
	case fInitImage, fStrength, fMask, fMaskBlur, fMaskPadding:
		return true
	}
	return false
}

func (s *img2imgSection) set(r request.Request) {
	s.initImage.SetText(r.InitImage)
	st := r.Strength
	if st == 0 {
		st = request.DefaultStrength
	}
	s.strength.SetText(formatFloat(st))
	s.mask.SetText(r.MaskImage)
	blur := request.DefaultMaskBlur
	if r.MaskBlur != nil {
		blur = *r.MaskBlur
	}
	s.maskBlur.SetText(strconv.Itoa(blur))
	s.maskPadding.SetText(strconv.Itoa(r.MaskPadding))
}

func (s *img2imgSection) read(r *request.Request, errs *[]*request.FieldError) {
	p := parsed{errs}
	if r.InitImage = strings.TrimSpace(s.initImage.Text); r.InitImage != "" {
		r.Strength = p.float(fStrength, s.strength.Text)
		if r.Strength == 0 {
			p.bad(fStrength, "must be above 0 and at most 1, got 0")
		}
	}
	if r.MaskImage = strings.TrimSpace(s.mask.Text); r.MaskImage != "" {
		r.MaskBlur = request.IntPtr(p.integer(fMaskBlur, s.maskBlur.Text))
		if t := strings.TrimSpace(s.maskPadding.Text); t != "" {
			r.MaskPadding = p.integer(fMaskPadding, t)
		}
	}
}

func (s *img2imgSection) content() fyne.CanvasObject {
	ff := s.fields
	s.initThumb.row = container.NewBorder(nil, nil, s.initThumb.box,
		ff.browseButton(false, "Choose an init image", s.initImage.SetText, "png", "jpg", "jpeg", "webp"), s.initImage)
	s.maskThumb.row = container.NewBorder(nil, nil, s.maskThumb.box, container.NewHBox(
		ff.browseButton(false, "Choose a mask image", s.mask.SetText, "png", "jpg", "jpeg", "webp"), s.paintMask), s.mask)
	return container.NewVBox(
		ff.field(fInitImage, s.initThumb.row),
		ff.field(fStrength, container.NewBorder(nil, nil, nil, narrowEntry(s.strength), s.strengthSlider)),
		ff.field(fMask, s.maskThumb.row),
		container.NewGridWithColumns(2, ff.field(fMaskBlur, s.maskBlur), ff.field(fMaskPadding, s.maskPadding)))
}

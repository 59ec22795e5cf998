package ui

import (
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"

	"atelier/core/library"
	"atelier/core/request"
)

// upscaleSection is the upscaler run on the finished image, and its factor.
type upscaleSection struct {
	fields   *formFields
	upscaler *escSelectEntry
	factor   *submitEntry
}

func newUpscaleSection(ff *formFields) *upscaleSection {
	s := &upscaleSection{fields: ff}
	s.upscaler = ff.modelChoice(fUpscaler, "none, lanczos, or an ESRGAN model")
	s.factor = ff.entry(fUpscale, false)
	return s
}

func (s *upscaleSection) owns(field string) bool { return field == fUpscaler || field == fUpscale }

func (s *upscaleSection) setLibrary(lib *library.Library) {
	s.fields.setChoices(s.upscaler, append([]string{request.LanczosUpscaler, request.TinyUpscaler}, lib.Paths(library.KindUpscaler)...))
}

func (s *upscaleSection) set(r request.Request) {
	s.upscaler.SetText(r.Upscaler)
	up := r.Upscale
	if up == 0 {
		up = request.DefaultUpscale
	}
	s.factor.SetText(formatFloat(up))
}

func (s *upscaleSection) read(r *request.Request, errs *[]*request.FieldError) {
	if r.Upscaler = strings.TrimSpace(s.upscaler.Text); r.Upscaler != "" {
		r.Upscale = parsed{errs}.float(fUpscale, s.factor.Text)
	}
}

func (s *upscaleSection) content() fyne.CanvasObject {
	ff := s.fields
	return container.NewVBox(
		ff.field(fUpscaler, container.NewBorder(nil, nil, nil,
			ff.browseButton(false, "Choose an upscaler model (.safetensors)", s.upscaler.SetText, "safetensors"), s.upscaler)),
		ff.field(fUpscale, s.factor))
}

package ui

import (
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/widget"

	"atelier/core/library"
	"atelier/core/request"
)

// refinerSection is the SDXL refiner and the share of the steps it takes over.
type refinerSection struct {
	fields   *formFields
	refiner  *escSelectEntry
	switchAt *submitEntry
	slider   *widget.Slider
}

func newRefinerSection(ff *formFields) *refinerSection {
	s := &refinerSection{fields: ff}
	s.refiner = ff.modelChoice(fRefiner, "none, tiny-refiner, or a refiner folder")
	s.switchAt = ff.entry(fRefinerSwitch, false)
	s.slider = widget.NewSlider(0.05, 0.95)
	s.slider.Step = 0.05
	ff.linkSlider(fRefinerSwitch, s.switchAt, s.slider, formatHundredths)
	return s
}

func (s *refinerSection) owns(field string) bool { return field == fRefiner || field == fRefinerSwitch }

func (s *refinerSection) setLibrary(lib *library.Library) {
	s.fields.setChoices(s.refiner, append([]string{request.TinyRefiner}, lib.Paths(library.KindRefiner)...))
}

func (s *refinerSection) set(r request.Request) {
	s.refiner.SetText(r.Refiner)
	sw := r.RefinerSwitch
	if sw == 0 {
		sw = request.DefaultRefinerSwitch
	}
	s.switchAt.SetText(formatFloat(sw))
}

func (s *refinerSection) read(r *request.Request, errs *[]*request.FieldError) {
	p := parsed{errs}
	if r.Refiner = strings.TrimSpace(s.refiner.Text); r.Refiner != "" {
		r.RefinerSwitch = p.float(fRefinerSwitch, s.switchAt.Text)
		if r.RefinerSwitch == 0 {
			p.bad(fRefinerSwitch, "must be above 0 and below 1, got 0")
		}
	}
}

func (s *refinerSection) content() fyne.CanvasObject {
	ff := s.fields
	return container.NewVBox(
		ff.field(fRefiner, container.NewBorder(nil, nil, nil,
			ff.browseButton(true, "Choose an SDXL refiner folder", s.refiner.SetText), s.refiner)),
		ff.field(fRefinerSwitch, container.NewBorder(nil, nil, nil, narrowEntry(s.switchAt), s.slider)))
}

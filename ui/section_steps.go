package ui

import (
	"strconv"
	"strings"

	"atelier/core/request"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/widget"
)

// stepsSection is the number of steps and the CFG scale, each an entry with
// a slider.
type stepsSection struct {
	fields      *formFields
	steps, cfg  *submitEntry
	stepsSlider *widget.Slider
	cfgSlider   *widget.Slider
}

func newStepsSection(ff *formFields) *stepsSection {
	s := &stepsSection{fields: ff}
	s.steps = ff.entry(fSteps, false)
	s.stepsSlider = widget.NewSlider(request.MinSteps, request.MaxSteps)
	ff.linkSlider(fSteps, s.steps, s.stepsSlider, func(v float64) string { return strconv.Itoa(int(v)) })
	s.cfg = ff.entry(fCFG, false)
	s.cfgSlider = widget.NewSlider(request.MinCFG, request.MaxCFG)
	s.cfgSlider.Step = 0.5
	ff.linkSlider(fCFG, s.cfg, s.cfgSlider, formatFloat)
	return s
}

func (s *stepsSection) set(r request.Request) {
	s.steps.SetText(strconv.Itoa(r.Steps))
	s.cfg.SetText(formatFloat(r.CFG))
}

func (s *stepsSection) read(r *request.Request, errs *[]*request.FieldError) {
	p := parsed{errs}
	r.Steps = int(p.integer64(fSteps, s.steps.Text))
	if v, err := strconv.ParseFloat(strings.TrimSpace(s.cfg.Text), 64); err != nil {
		p.bad(fCFG, "must be a number, got %q", s.cfg.Text)
	} else {
		r.CFG = v
	}
}

func (s *stepsSection) content() fyne.CanvasObject {
	sliderRow := func(e *submitEntry, sl *widget.Slider) fyne.CanvasObject {
		return container.NewBorder(nil, nil, nil, container.NewGridWrap(fyne.NewSize(76, e.MinSize().Height), e), sl)
	}
	return container.NewVBox(
		s.fields.field(fSteps, sliderRow(s.steps, s.stepsSlider)),
		s.fields.field(fCFG, sliderRow(s.cfg, s.cfgSlider)))
}

package ui

import (
	"fmt"
	"strconv"
	"strings"

	"atelier/core/request"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/widget"
)

// hiresSection is the hires fix: the factor of a second, img2img pass over
// the enlarged text-to-image result, its steps and its strength.
type hiresSection struct {
	fields         *formFields
	size           *sizeSection // the size the pass enlarges, for the hint
	scale          *submitEntry
	steps          *submitEntry
	strength       *submitEntry
	strengthSlider *widget.Slider
	hint           *widget.Label // "1024 × 1024 to 1536 × 1536"
}

func newHiresSection(ff *formFields, size *sizeSection) *hiresSection {
	s := &hiresSection{fields: ff, size: size}
	s.scale = ff.entry(fHires, false)
	s.scale.OnChanged = func(string) { ff.clearError(fHires); s.updateHint(); ff.edited() }
	s.hint = widget.NewLabel("")
	s.hint.Importance = widget.LowImportance
	s.hint.Hide()
	s.scale.SetPlaceHolder(fmt.Sprintf("off; %g–%g, e.g. %g", request.MinHires, request.MaxHires, request.DefaultHiresScale))
	s.steps = ff.entry(fHiresSteps, false)
	s.steps.SetPlaceHolder("the job's steps")
	s.strength = ff.entry(fHiresStrength, false)
	s.strengthSlider = widget.NewSlider(0.05, 1)
	s.strengthSlider.Step = 0.05
	ff.linkSlider(fHiresStrength, s.strength, s.strengthSlider, formatHundredths)
	return s
}

func (s *hiresSection) owns(field string) bool {
	return field == fHires || field == fHiresSteps || field == fHiresStrength
}

// updateHint shows the size the hires pass will make, when the factor and
// the size read as numbers.
func (s *hiresSection) updateHint() {
	r := request.Request{}
	var err1, err2, err3 error
	r.HiresScale, err1 = strconv.ParseFloat(strings.TrimSpace(s.scale.Text), 64)
	r.Width, err2 = strconv.Atoi(strings.TrimSpace(s.size.width.Text))
	r.Height, err3 = strconv.Atoi(strings.TrimSpace(s.size.height.Text))
	// An empty label still takes a line: with no pass to describe, the hint goes.
	was := s.hint.Visible()
	if err1 != nil || err2 != nil || err3 != nil || r.HiresScale < request.MinHires || r.HiresScale > request.MaxHires || r.Width <= 0 || r.Height <= 0 {
		s.hint.SetText("")
		s.hint.Hide()
	} else {
		w, h := r.HiresSize()
		s.hint.SetText(fmt.Sprintf("%d × %d to %d × %d", r.Width, r.Height, w, h))
		s.hint.Show()
	}
	if s.hint.Visible() != was {
		s.fields.relayout()
	}
}

func (s *hiresSection) set(r request.Request) {
	s.scale.SetText("")
	if r.HiresScale != 0 {
		s.scale.SetText(formatFloat(r.HiresScale))
	}
	s.steps.SetText("")
	if r.HiresSteps != 0 {
		s.steps.SetText(strconv.Itoa(r.HiresSteps))
	}
	hs := r.HiresStrength
	if hs == 0 {
		hs = request.DefaultHiresStrength
	}
	s.strength.SetText(formatFloat(hs))
}

func (s *hiresSection) read(r *request.Request, errs *[]*request.FieldError) {
	p := parsed{errs}
	if t := strings.TrimSpace(s.scale.Text); t != "" {
		// 0 reads as "off" on the wire: a typed 0 is refused rather than dropped.
		if r.HiresScale = p.float(fHires, t); r.HiresScale == 0 {
			p.bad(fHires, "must be between %g and %g (leave it empty for no hires pass), got 0", request.MinHires, request.MaxHires)
		}
		if t := strings.TrimSpace(s.steps.Text); t != "" {
			r.HiresSteps = p.integer(fHiresSteps, t)
		}
		if r.HiresStrength = p.float(fHiresStrength, s.strength.Text); r.HiresStrength == 0 {
			p.bad(fHiresStrength, "must be above 0 and at most 1, got 0")
		}
	}
}

func (s *hiresSection) content() fyne.CanvasObject {
	ff := s.fields
	about := ff.wrapLabel("Enlarges the text-to-image result with Lanczos and draws it again with img2img, " +
		"so that a large image gets SDXL's composition and the model's own detail.")
	return container.NewVBox(
		about,
		container.NewGridWithColumns(2, ff.field(fHires, s.scale), ff.field(fHiresSteps, s.steps)),
		s.hint,
		ff.field(fHiresStrength, container.NewBorder(nil, nil, nil, narrowEntry(s.strength), s.strengthSlider)))
}

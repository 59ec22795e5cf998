package ui

import (
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/widget"

	"atelier/core/jobs"
	"atelier/core/library"
	"atelier/core/request"
)

// vaeSection is the VAE that decodes the latents, and a note when the last
// job's VAE had to fall back to float32.
type vaeSection struct {
	fields *formFields
	vae    *escSelectEntry
	note   *widget.Label
}

func newVAESection(ff *formFields) *vaeSection {
	s := &vaeSection{fields: ff}
	s.vae = ff.modelChoice(fVAE, "the model's own, or a VAE")
	s.note = widget.NewLabel("")
	s.note.Importance = widget.WarningImportance
	s.note.Wrapping = fyne.TextWrapWord
	s.note.Hide()
	return s
}

func (s *vaeSection) owns(field string) bool { return field == fVAE }

func (s *vaeSection) setLibrary(lib *library.Library) {
	s.fields.setChoices(s.vae, append([]string{request.TinyVAE}, lib.Paths(library.KindVAE)...))
}

func (s *vaeSection) set(r request.Request) { s.vae.SetText(r.VAE) }

func (s *vaeSection) read(r *request.Request, _ *[]*request.FieldError) {
	r.VAE = strings.TrimSpace(s.vae.Text)
}

// showResult says so when a finished job's VAE fell back to float32.
func (s *vaeSection) showResult(out *jobs.JobOutcome) {
	if out.Metrics != nil && out.Metrics.VAEFallback {
		s.note.SetText("The VAE gave NaNs at half precision and was rerun in float32 (slower). An fp16-fixed VAE avoids this.")
		s.note.Show()
	} else {
		s.note.Hide()
	}
	s.fields.relayout()
}

func (s *vaeSection) content() fyne.CanvasObject {
	ff := s.fields
	return container.NewVBox(
		ff.field(fVAE, container.NewBorder(nil, nil, nil, container.NewHBox(
			ff.browseButton(false, "Choose a VAE (.safetensors)", s.vae.SetText, "safetensors"),
			ff.browseButton(true, "Choose a VAE folder", s.vae.SetText)), s.vae)),
		s.note)
}

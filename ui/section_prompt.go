package ui

import (
	"strings"

	"atelier/core/request"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
)

// promptSection is the prompt and the negative prompt.
type promptSection struct {
	fields           *formFields
	prompt, negative *submitEntry
}

func newPromptSection(ff *formFields) *promptSection {
	p := &promptSection{fields: ff}
	p.prompt = ff.entry(fPrompt, true)
	p.prompt.SetPlaceHolder("Describe the image: subject, style, light, lens… (word:1.3) stresses a word, [word] softens it")
	p.prompt.SetMinRowsVisible(4)
	p.negative = ff.entry(fNegative, true)
	p.negative.SetPlaceHolder("What to avoid: blurry, lowres, watermark…")
	p.negative.SetMinRowsVisible(2)
	return p
}

func (p *promptSection) set(r request.Request) {
	p.prompt.SetText(r.Prompt)
	p.negative.SetText(r.NegativePrompt)
}

func (p *promptSection) read(r *request.Request, _ *[]*request.FieldError) {
	r.Prompt = plainNewlines(p.prompt.Text)
	r.NegativePrompt = strings.TrimSpace(plainNewlines(p.negative.Text))
}

// plainNewlines turns the line ends of text pasted from another system (CRLF, CR)
// into newlines: a request refuses carriage returns, which the PNG's text may not hold.
func plainNewlines(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\r", "\n")
}

func (p *promptSection) content() fyne.CanvasObject {
	return container.NewVBox(p.fields.field(fPrompt, p.prompt), p.fields.field(fNegative, p.negative))
}

package ui

import (
	"fmt"
	"image/color"
	"math"
	"regexp"
	"strconv"
	"strings"

	"atelier/core/request"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/canvas"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/layout"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"
)

// Field names, as request.FieldError and failure.JobError name them.
const (
	fPrompt    = "prompt"
	fNegative  = "negative_prompt"
	fModel     = "model"
	fScheduler = "scheduler"
	fSteps     = "steps"
	fCFG       = "cfg"
	fWidth     = "width"
	fHeight    = "height"
	fSeed      = "seed"
	fBatch     = "batch_size"

	fSchedule      = "schedule"
	fLoRAs         = "loras"
	fControlNets   = "controlnets"
	fRefiner       = "refiner"
	fRefinerSwitch = "refiner_switch"
	fVAE           = "vae"
	fInitImage     = "init_image"
	fStrength      = "strength"
	fMask          = "mask_image"
	fMaskBlur      = "mask_blur"
	fMaskPadding   = "mask_padding"
	fUpscaler      = "upscaler"
	fUpscale       = "upscale"
	fHires         = "hires_scale"
	fHiresSteps    = "hires_steps"
	fHiresStrength = "hires_strength"
	fBatchCount    = "batch_count"
)

// fieldTitles name fields in messages the way the form labels them.
var fieldTitles = map[string]string{
	fPrompt: "Prompt", fNegative: "Negative prompt", fModel: "Model", fScheduler: "Sampler",
	fSteps: "Steps", fCFG: "CFG scale", fWidth: "Width", fHeight: "Height", fSeed: "Seed",
	fBatch: "Images",

	fSchedule: "Schedule type", fLoRAs: "LoRAs", fControlNets: "ControlNets", fRefiner: "Refiner",
	fRefinerSwitch: "Refiner switch", fVAE: "VAE", fInitImage: "Init image", fStrength: "Denoising strength",
	fMask: "Mask", fMaskBlur: "Mask blur", fMaskPadding: "Mask padding", fUpscaler: "Upscaler",
	fUpscale: "Upscale factor", fHires: "Enlarge by (empty = off)", fHiresSteps: "Hires steps",
	fHiresStrength: "Hires denoising strength", fBatchCount: "Batch count",
}

// Titles of the per-row fields, e.g. "loras[1].weight" → "LoRA 2 weight".
var (
	reRowField = regexp.MustCompile(`^(loras|controlnets)\[(\d+)\]\.(\w+)$`)
	rowTitles  = map[string]string{
		"path": "path", "weight": "weight", "type": "type", "model": "model", "image": "image", "scale": "scale",
		"start": "start", "end": "end", "canny_low": "low threshold", "canny_high": "high threshold",
	}
)

// title names a field the way the form labels it.
func title(field string) string {
	if t, ok := fieldTitles[field]; ok {
		return t
	}
	if m := reRowField.FindStringSubmatch(field); m != nil {
		n, _ := strconv.Atoi(m[2])
		kind := "LoRA"
		if m[1] == fControlNets {
			kind = "ControlNet"
		}
		return fmt.Sprintf("%s %d %s", kind, n+1, rowTitles[m[3]])
	}
	return field
}

// formFields is what the form's sections share: each field's red error label
// and entry by name, the drop-downs' options, and the native choosers. UI
// goroutine only.
type formFields struct {
	// errs holds the red label under each field; entries the entry to mark red.
	errs    map[string]*widget.Label
	entries map[string]*widget.Entry
	// syncing stops the slider↔entry and preset↔size handlers from echoing.
	syncing bool
	// choices remembers each drop-down's options (SelectEntry does not say).
	choices map[*escSelectEntry][]string

	onSubmit func()
	// onEdit follows edits of the fields that the section headers sum up.
	onEdit func()
	// onMarksGone runs when an edit clears the last marked field.
	onMarksGone func()
	// onChange follows every edit of the form (the studio saves the form on it).
	onChange func()
	do       func(func())
	// onLayout lays the form out again after a part of it grew or shrank (a
	// row, a hint or an error came or went): Fyne's accordion and the form's
	// scroller keep their old height otherwise, leaving a blank gap.
	onLayout func()
	// reveal opens the part of the form that holds a field (the form sets it).
	reveal func(field string)
	// chooseFile and chooseFolder ask with the native dialogs; they block, so
	// they run off the UI goroutine. Tests replace them.
	chooseFile   func(title string, exts ...string) (string, error)
	chooseFolder func(title string) (string, error)
}

// edited tells the form that a value changed.
func (ff *formFields) edited() {
	if ff.onEdit != nil {
		ff.onEdit()
	}
	if ff.onChange != nil {
		ff.onChange()
	}
}

// relayout lays the form out again after a part of it changed height.
func (ff *formFields) relayout() {
	if ff.onLayout != nil {
		ff.onLayout()
	}
}

// errorLabel gives a field its red label (hidden until an error comes).
func (ff *formFields) errorLabel(name string) *widget.Label {
	if l, ok := ff.errs[name]; ok {
		return l
	}
	l := errLabel()
	ff.errs[name] = l
	return l
}

// showErrorText marks one field with a message that stands on its own; it
// reports false for a field the form lacks.
func (ff *formFields) showErrorText(field, msg string) bool {
	l, ok := ff.errs[field]
	if !ok {
		return false
	}
	l.SetText(msg)
	l.Show()
	ff.relayout()
	if ff.reveal != nil {
		ff.reveal(field)
	}
	if e, ok := ff.entries[field]; ok {
		e.SetValidationError(fmt.Errorf("%s", msg))
	}
	return true
}

func (ff *formFields) clearError(field string) {
	l, ok := ff.errs[field]
	if !ok || !l.Visible() {
		return
	}
	l.SetText("")
	l.Hide()
	ff.relayout()
	if e, ok := ff.entries[field]; ok {
		e.SetValidationError(nil)
	}
	if ff.onMarksGone != nil && len(ff.marked()) == 0 {
		ff.onMarksGone()
	}
}

// marked is the names of the fields that show an error.
func (ff *formFields) marked() []string {
	var names []string
	for name, l := range ff.errs {
		if l.Visible() {
			names = append(names, name)
		}
	}
	return names
}

func (ff *formFields) clearErrors() {
	for name := range ff.errs {
		ff.clearError(name)
	}
}

// field is a field's caption, its widget and its error label, stacked.
func (ff *formFields) field(name string, w fyne.CanvasObject) fyne.CanvasObject {
	return container.NewVBox(caption(title(name)), w, ff.errs[name])
}

// linkSlider keeps an entry and its slider in step; the entry stays the source
// of truth, so that values the slider cannot show (typos, 0) still reach validation.
func (ff *formFields) linkSlider(name string, e *submitEntry, s *widget.Slider, format func(float64) string) {
	ff.linkSliderTo(func() { ff.clearError(name) }, e, s, format)
}

// linkSliderLabel is linkSlider for a row whose error label is its own.
func (ff *formFields) linkSliderLabel(errl *widget.Label, e *submitEntry, s *widget.Slider, format func(float64) string) {
	ff.linkSliderTo(func() {
		errl.Hide()
		e.SetValidationError(nil)
	}, e, s, format)
}

func (ff *formFields) linkSliderTo(clear func(), e *submitEntry, s *widget.Slider, format func(float64) string) {
	s.OnChanged = func(v float64) {
		if ff.syncing {
			return
		}
		ff.syncing = true
		e.SetText(format(v))
		ff.syncing = false
	}
	e.OnChanged = func(text string) {
		clear()
		ff.edited()
		if ff.syncing {
			return
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(text), 64); err == nil && v >= s.Min && v <= s.Max {
			ff.syncing = true
			s.SetValue(v)
			ff.syncing = false
		}
	}
}

// submitEntry is an entry of the form that submits on Ctrl+Enter.
func (ff *formFields) submitEntry(multiLine bool) *submitEntry {
	return newSubmitEntry(multiLine, ff.onSubmit)
}

// entry is a named entry of the form: submitting, its error cleared on edit.
func (ff *formFields) entry(field string, multiLine bool) *submitEntry {
	e := ff.submitEntry(multiLine)
	e.OnChanged = func(string) { ff.clearError(field); ff.edited() }
	ff.entries[field] = &e.Entry
	return e
}

// pathEntry is an entry for a file path.
func (ff *formFields) pathEntry(field, placeholder string) *escEntry {
	e := newEscEntry()
	e.SetPlaceHolder(placeholder)
	e.AlwaysShowValidationError = true
	e.changed(func(string) { ff.clearError(field); ff.edited() })
	ff.entries[field] = &e.Entry
	return e
}

// modelChoice is a drop-down of library entries that also takes a typed path.
func (ff *formFields) modelChoice(field, placeholder string) *escSelectEntry {
	e := newEscSelectEntry(nil)
	e.SetPlaceHolder(placeholder)
	e.AlwaysShowValidationError = true
	e.changed(func(string) { ff.clearError(field); ff.edited() })
	ff.entries[field] = &e.Entry
	return e
}

// setChoices sets a drop-down's options and remembers them.
func (ff *formFields) setChoices(e *escSelectEntry, opts []string) {
	ff.choices[e] = opts
	e.SetOptions(opts)
}

// browse runs a native chooser off the UI goroutine and puts the answer into set.
func (ff *formFields) browse(choose func() (string, error), set func(string)) {
	go func() {
		p, err := choose()
		if err == nil && p != "" {
			ff.do(func() { set(p) })
		}
	}()
}

func (ff *formFields) browseButton(folder bool, titleText string, set func(string), exts ...string) *tipButton {
	icon := theme.FileIcon()
	if folder {
		icon = theme.FolderOpenIcon()
	}
	return newTipButton(icon, titleText, func() {
		if folder {
			ff.browse(func() (string, error) { return ff.chooseFolder(titleText) }, set)
		} else {
			ff.browse(func() (string, error) { return ff.chooseFile(titleText, exts...) }, set)
		}
	})
}

// parsed reads the numbers of a section's entries, collecting an error for
// each text that is not one.
type parsed struct{ errs *[]*request.FieldError }

func (p parsed) bad(field, format string, args ...any) {
	*p.errs = append(*p.errs, &request.FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
}

func (p parsed) float(field, text string) float64 {
	v, err := strconv.ParseFloat(strings.TrimSpace(text), 64)
	if err != nil {
		p.bad(field, "must be a number, got %q", text)
	}
	return v
}

func (p parsed) integer(field, text string) int {
	v, err := strconv.Atoi(strings.TrimSpace(text))
	if err != nil {
		p.bad(field, "must be a whole number, got %q", text)
	}
	return v
}

func (p parsed) integer64(field, text string) int64 {
	v, err := strconv.ParseInt(strings.TrimSpace(text), 10, 64)
	if err != nil {
		p.bad(field, "must be a whole number, got %q", text)
	}
	return v
}

func formatFloat(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// formatHundredths writes a slider's value without its float noise (0.7, not 0.7000000000000001).
func formatHundredths(v float64) string { return formatFloat(math.Round(v*100) / 100) }

func errLabel() *widget.Label {
	l := widget.NewLabel("")
	l.Importance = widget.DangerImportance
	l.Wrapping = fyne.TextWrapWord
	l.Hide()
	return l
}

func labelled(text string, o fyne.CanvasObject) fyne.CanvasObject {
	return container.NewVBox(caption(text), o)
}

func narrowEntry(e *submitEntry) fyne.CanvasObject {
	return container.NewGridWrap(fyne.NewSize(76, e.MinSize().Height), e)
}

// caption is a field's name above it: canvas text without a label's padding,
// so the form stays compact enough to fit a laptop screen without scrolling.
func caption(text string) fyne.CanvasObject {
	fg := theme.Color(theme.ColorNameForeground)
	r, g, b, _ := fg.RGBA()
	t := canvas.NewText(text, color.NRGBA{R: uint8(r >> 8), G: uint8(g >> 8), B: uint8(b >> 8), A: 0xa0})
	t.TextSize = theme.CaptionTextSize()
	return container.New(layout.NewCustomPaddedLayout(theme.Padding(), 0, theme.InnerPadding()/2, 0), t)
}

func heading(text string) *widget.Label {
	return widget.NewLabelWithStyle(text, fyne.TextAlignLeading, fyne.TextStyle{Bold: true})
}

// wrapLabel is a word-wrapped label of the form that lays the form out again
// when a new width changes its height: Fyne sizes a box of widgets from their
// heights before the label knows its width, which left a blank gap under a
// paragraph once it wrapped to fewer lines.
type wrapLabel struct {
	widget.Label
	ff *formFields
}

func (ff *formFields) wrapLabel(text string) *wrapLabel {
	l := &wrapLabel{ff: ff}
	l.Text = text
	l.Wrapping = fyne.TextWrapWord
	l.ExtendBaseWidget(l)
	return l
}

// Resize implements fyne.CanvasObject.
func (l *wrapLabel) Resize(s fyne.Size) {
	if s.Width == l.Size().Width {
		l.Label.Resize(s)
		return
	}
	before := l.MinSize().Height
	l.Label.Resize(s)
	if l.MinSize().Height != before && l.ff.do != nil {
		l.ff.do(l.ff.relayout) // after this layout pass, not inside it
	}
}

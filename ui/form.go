package ui

import (
	"encoding/json"
	"fmt"
	"image/color"
	"math/rand/v2"
	"strconv"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/canvas"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/layout"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"
	"github.com/sqweek/dialog"

	"atelier/core"
)

// Field names, as core.FieldError and core.JobError name them.
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
)

// fieldTitles name fields in messages the way the form labels them.
var fieldTitles = map[string]string{
	fPrompt: "Prompt", fNegative: "Negative prompt", fModel: "Model", fScheduler: "Sampler",
	fSteps: "Steps", fCFG: "CFG scale", fWidth: "Width", fHeight: "Height", fSeed: "Seed",
	fBatch: "Images",
}

const (
	tinyHint   = "tiny demo model: noise images, for trying the app"
	folderHint = "a diffusers SDXL folder (model_index.json, unet/, vae/ …); it does best at a 1-megapixel preset with 25–40 steps"
	prefsKey   = "atelier.form.v1"
	customSize = "Custom"
)

// sizePreset is one of SDXL's trained resolutions (about one megapixel), which
// give far better images than arbitrary sizes.
type sizePreset struct {
	label string
	w, h  int
}

var sizePresets = []sizePreset{
	{"1024 × 1024  square", 1024, 1024},
	{"1152 × 896  landscape 9:7", 1152, 896},
	{"1216 × 832  landscape 3:2", 1216, 832},
	{"1344 × 768  landscape 16:9", 1344, 768},
	{"1536 × 640  cinema 21:9", 1536, 640},
	{"896 × 1152  portrait 7:9", 896, 1152},
	{"832 × 1216  portrait 2:3", 832, 1216},
	{"768 × 1344  portrait 9:16", 768, 1344},
	{"512 × 512  quick draft", 512, 512},
}

// form holds the request widgets. It is used from the UI goroutine only.
type form struct {
	prompt, negative *submitEntry
	model            *widget.SelectEntry
	modelHint        *widget.Label
	browse           *widget.Button
	scheduler        *widget.Select
	steps, cfg       *submitEntry
	stepsSlider      *widget.Slider
	cfgSlider        *widget.Slider
	size             *widget.Select
	width, height    *submitEntry
	swap             *widget.Button
	seed             *submitEntry
	dice, anySeed    *widget.Button
	batch            *widget.Select

	// errs holds the red label under each field; entries the entry to mark red.
	errs    map[string]*widget.Label
	entries map[string]*widget.Entry
	// syncing stops the slider↔entry and preset↔size handlers from echoing.
	syncing bool
	// models remembers recently used model paths for the model drop-down.
	models []string
	// feat are the feature sections (sampling, LoRA, ControlNet …).
	feat *sections
}

func newForm(onSubmit func(), do func(func())) *form {
	f := &form{errs: map[string]*widget.Label{}, entries: map[string]*widget.Entry{}}

	f.prompt = newSubmitEntry(true, onSubmit)
	f.prompt.SetPlaceHolder("Describe the image: subject, style, light, lens… (word:1.3) stresses a word, [word] softens it")
	f.prompt.SetMinRowsVisible(4)
	f.negative = newSubmitEntry(true, onSubmit)
	f.negative.SetPlaceHolder("What to avoid: blurry, lowres, watermark…")
	f.negative.SetMinRowsVisible(2)

	f.model = widget.NewSelectEntry([]string{core.TinyModel})
	f.model.SetPlaceHolder("tiny, or a diffusers folder")
	f.modelHint = widget.NewLabel("")
	f.modelHint.SizeName = theme.SizeNameCaptionText
	f.modelHint.Wrapping = fyne.TextWrapWord
	f.model.OnChanged = func(string) { f.clearError(fModel); f.updateModelHint() }
	f.browse = widget.NewButtonWithIcon("", theme.FolderOpenIcon(), func() {
		// The native picker blocks its caller, so it runs off the UI goroutine.
		go func() {
			dir, err := dialog.Directory().Title("Choose a diffusers model folder").Browse()
			if err == nil && dir != "" {
				do(func() { f.model.SetText(dir) })
			}
		}()
	})

	f.scheduler = widget.NewSelect(schedulerLabels(core.Schedulers), func(string) { f.clearError(fScheduler) })
	batches := make([]string, 0, core.MaxBatch)
	for i := core.MinBatch; i <= core.MaxBatch; i++ {
		batches = append(batches, strconv.Itoa(i))
	}
	f.batch = widget.NewSelect(batches, func(string) { f.clearError(fBatch) })

	f.steps = newSubmitEntry(false, onSubmit)
	f.stepsSlider = widget.NewSlider(core.MinSteps, core.MaxSteps)
	f.linkSlider(fSteps, f.steps, f.stepsSlider, func(v float64) string { return strconv.Itoa(int(v)) })
	f.cfg = newSubmitEntry(false, onSubmit)
	f.cfgSlider = widget.NewSlider(core.MinCFG, core.MaxCFG)
	f.cfgSlider.Step = 0.5
	f.linkSlider(fCFG, f.cfg, f.cfgSlider, formatFloat)

	labels := make([]string, 0, len(sizePresets)+1)
	for _, p := range sizePresets {
		labels = append(labels, p.label)
	}
	f.size = widget.NewSelect(append(labels, customSize), f.presetChosen)
	f.width = newSubmitEntry(false, onSubmit)
	f.width.SetPlaceHolder("width")
	f.height = newSubmitEntry(false, onSubmit)
	f.height.SetPlaceHolder("height")
	for name, e := range map[string]*submitEntry{fWidth: f.width, fHeight: f.height} {
		name := name
		e.OnChanged = func(string) {
			f.clearError(name)
			f.matchPreset()
			if f.feat != nil {
				f.feat.updateHiresHint()
			}
		}
	}
	f.swap = widget.NewButtonWithIcon("", swapIcon, func() {
		w, h := f.width.Text, f.height.Text
		f.width.SetText(h)
		f.height.SetText(w)
	})

	f.seed = newSubmitEntry(false, onSubmit)
	f.seed.SetPlaceHolder("-1 = random")
	f.seed.OnChanged = func(string) { f.clearError(fSeed) }
	f.dice = widget.NewButtonWithIcon("", diceIcon, func() { f.seed.SetText(strconv.FormatInt(randomSeed(), 10)) })
	f.anySeed = widget.NewButton("Any", func() { f.seed.SetText("-1") })
	f.prompt.OnChanged = func(string) { f.clearError(fPrompt) }
	f.negative.OnChanged = func(string) { f.clearError(fNegative) }

	for name, e := range map[string]*widget.Entry{
		fPrompt: &f.prompt.Entry, fNegative: &f.negative.Entry, fModel: &f.model.Entry,
		fSteps: &f.steps.Entry, fCFG: &f.cfg.Entry, fWidth: &f.width.Entry,
		fHeight: &f.height.Entry, fSeed: &f.seed.Entry,
	} {
		f.entries[name] = e
	}
	for name := range fieldTitles {
		l := widget.NewLabel("")
		l.Importance = widget.DangerImportance
		l.Wrapping = fyne.TextWrapWord
		l.Hide()
		f.errs[name] = l
	}
	f.feat = newSections(f, onSubmit, do)
	return f
}

// addErrorLabel gives a field its red label (hidden until an error comes).
func (f *form) addErrorLabel(name string) {
	if _, ok := f.errs[name]; !ok {
		f.errs[name] = errLabel()
	}
}

// linkSliderLabel is linkSlider for a row whose error label is its own.
func (f *form) linkSliderLabel(errl *widget.Label, e *submitEntry, s *widget.Slider, format func(float64) string) {
	s.OnChanged = func(v float64) {
		if f.syncing {
			return
		}
		f.syncing = true
		e.SetText(format(v))
		f.syncing = false
	}
	e.OnChanged = func(text string) {
		errl.Hide()
		e.SetValidationError(nil)
		if f.syncing {
			return
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(text), 64); err == nil && v >= s.Min && v <= s.Max {
			f.syncing = true
			s.SetValue(v)
			f.syncing = false
		}
	}
}

// linkSlider keeps an entry and its slider in step; the entry stays the source
// of truth, so that values the slider cannot show (typos, 0) still reach validation.
func (f *form) linkSlider(name string, e *submitEntry, s *widget.Slider, format func(float64) string) {
	s.OnChanged = func(v float64) {
		if f.syncing {
			return
		}
		f.syncing = true
		e.SetText(format(v))
		f.syncing = false
	}
	e.OnChanged = func(text string) {
		f.clearError(name)
		if f.syncing {
			return
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(text), 64); err == nil && v >= s.Min && v <= s.Max {
			f.syncing = true
			s.SetValue(v)
			f.syncing = false
		}
	}
}

func (f *form) presetChosen(label string) {
	if f.syncing {
		return
	}
	for _, p := range sizePresets {
		if p.label == label {
			f.syncing = true
			f.width.SetText(strconv.Itoa(p.w))
			f.height.SetText(strconv.Itoa(p.h))
			f.syncing = false
			return
		}
	}
}

// matchPreset shows the preset that the typed size matches, or Custom.
func (f *form) matchPreset() {
	if f.syncing {
		return
	}
	label := customSize
	w, _ := strconv.Atoi(strings.TrimSpace(f.width.Text))
	h, _ := strconv.Atoi(strings.TrimSpace(f.height.Text))
	for _, p := range sizePresets {
		if p.w == w && p.h == h {
			label = p.label
		}
	}
	f.syncing = true
	f.size.SetSelected(label)
	f.syncing = false
}

func (f *form) updateModelHint() {
	// The demo model is flagged in amber: its noise images must not be
	// mistaken for a broken install.
	if strings.TrimSpace(f.model.Text) == core.TinyModel {
		f.modelHint.Importance = widget.WarningImportance
		f.modelHint.SetText(tinyHint)
	} else {
		f.modelHint.Importance = widget.LowImportance
		f.modelHint.SetText(folderHint)
	}
}

// set fills the widgets from a request.
func (f *form) set(r core.Request) {
	f.prompt.SetText(r.Prompt)
	f.negative.SetText(r.NegativePrompt)
	f.model.SetText(r.Model)
	f.updateModelHint()
	sched := r.Scheduler
	if sched == "" {
		sched = core.Schedulers[0]
	}
	f.scheduler.SetSelected(schedulerLabel(sched))
	f.steps.SetText(strconv.Itoa(r.Steps))
	f.cfg.SetText(formatFloat(r.CFG))
	f.width.SetText(strconv.Itoa(r.Width))
	f.height.SetText(strconv.Itoa(r.Height))
	f.seed.SetText(strconv.FormatInt(r.Seed, 10))
	batch := r.BatchSize
	if batch < core.MinBatch {
		batch = core.MinBatch
	}
	f.batch.SetSelected(strconv.Itoa(batch))
	f.feat.set(r)
	f.clearErrors()
}

// request reads the widgets into a request and validates it. Text that is not
// a number is reported against its field like any other invalid value.
func (f *form) request() (core.Request, *core.ValidationError) {
	r := core.DefaultRequest()
	var errs []*core.FieldError
	parseInt := func(field, text string) int64 {
		v, err := strconv.ParseInt(strings.TrimSpace(text), 10, 64)
		if err != nil {
			errs = append(errs, &core.FieldError{Field: field, Message: fmt.Sprintf("must be a whole number, got %q", text)})
		}
		return v
	}
	r.Prompt = f.prompt.Text
	r.NegativePrompt = strings.TrimSpace(f.negative.Text)
	r.Model = strings.TrimSpace(f.model.Text)
	r.Scheduler = schedulerID(f.scheduler.Selected)
	r.Steps = int(parseInt(fSteps, f.steps.Text))
	if v, err := strconv.ParseFloat(strings.TrimSpace(f.cfg.Text), 64); err != nil {
		errs = append(errs, &core.FieldError{Field: fCFG, Message: fmt.Sprintf("must be a number, got %q", f.cfg.Text)})
	} else {
		r.CFG = v
	}
	r.Width = int(parseInt(fWidth, f.width.Text))
	r.Height = int(parseInt(fHeight, f.height.Text))
	if strings.TrimSpace(f.seed.Text) == "" {
		r.Seed = -1 // an empty seed means "any", as the placeholder says
	} else {
		r.Seed = parseInt(fSeed, f.seed.Text)
	}
	r.BatchSize, _ = strconv.Atoi(f.batch.Selected)
	// Previews are cheap latent→RGB files; the UI coalesces them to the frame rate.
	r.PreviewEvery = 1
	f.feat.read(&r, &errs)
	if _, fe := f.feat.count(); fe != nil {
		errs = append(errs, fe)
	}

	if err := r.Validate(); err != nil {
		if v, ok := core.AsValidation(err); ok {
			// A field that failed to parse already has the clearer message.
			for _, fe := range v.Fields {
				if !hasField(errs, fe.Field) {
					errs = append(errs, fe)
				}
			}
		}
	}
	if len(errs) > 0 {
		return r, &core.ValidationError{Fields: errs}
	}
	return r, nil
}

func hasField(errs []*core.FieldError, field string) bool {
	for _, e := range errs {
		if e.Field == field {
			return true
		}
	}
	return false
}

// showErrors puts each field error beside its field and returns the ones the
// form has no place for, so the caller can show them in the status line.
func (f *form) showErrors(v *core.ValidationError) []*core.FieldError {
	f.clearErrors()
	if v == nil {
		return nil
	}
	var rest []*core.FieldError
	for _, fe := range v.Fields {
		if !f.showError(fe.Field, fe.Message) {
			rest = append(rest, fe)
		}
	}
	return rest
}

// showError marks one field with a validation message ("must be …"), naming
// the field; it reports false for a field the form lacks.
func (f *form) showError(field, message string) bool {
	return f.showErrorText(field, title(field)+" "+message)
}

// showErrorText marks one field with a message that stands on its own.
func (f *form) showErrorText(field, msg string) bool {
	l, ok := f.errs[field]
	if !ok {
		return false
	}
	l.SetText(msg)
	l.Show()
	f.feat.openSectionOf(field)
	if e, ok := f.entries[field]; ok {
		e.SetValidationError(fmt.Errorf("%s", msg))
	}
	return true
}

func (f *form) clearError(field string) {
	l, ok := f.errs[field]
	if !ok || !l.Visible() {
		return
	}
	l.SetText("")
	l.Hide()
	if e, ok := f.entries[field]; ok {
		e.SetValidationError(nil)
	}
}

func (f *form) clearErrors() {
	for name := range f.errs {
		f.clearError(name)
	}
}

// rememberModel adds a model to the drop-down's recent list.
func (f *form) rememberModel(m string) {
	if m == "" {
		return
	}
	list := []string{core.TinyModel}
	if m != core.TinyModel {
		list = append(list, m)
	}
	for _, old := range f.models {
		if old != m && old != core.TinyModel && len(list) < 8 {
			list = append(list, old)
		}
	}
	f.models = list
	if f.feat != nil && f.feat.lib != nil {
		f.feat.setLibrary(f.feat.lib) // the library's checkpoints follow the recent ones
		return
	}
	f.model.SetOptions(list)
}

// savedForm is what the app remembers between runs: the last request and the
// models used recently. The first run starts from the tiny demo model.
type savedForm struct {
	Request core.Request `json:"request"`
	Models  []string     `json:"models"`
}

func (f *form) save(p fyne.Preferences, r core.Request) {
	f.rememberModel(r.Model)
	r.PreviewEvery, r.OutputDir = 0, ""
	if b, err := json.Marshal(savedForm{Request: r, Models: f.models}); err == nil {
		p.SetString(prefsKey, string(b))
	}
}

func (f *form) load(p fyne.Preferences) {
	r := firstRunRequest()
	var saved savedForm
	if s := p.String(prefsKey); s != "" && json.Unmarshal([]byte(s), &saved) == nil && saved.Request.Model != "" {
		r = saved.Request
		f.models = saved.Models
	}
	f.set(r)
	f.rememberModel(r.Model)
}

// firstRunRequest is the form a newcomer sees: the tiny demo model, at a size
// and step count that finish in seconds on a CPU, so pressing Generate right away
// shows the whole path working.
func firstRunRequest() core.Request {
	r := core.DefaultRequest()
	r.Prompt = "a lighthouse on a cliff at dusk, volumetric light, detailed"
	r.NegativePrompt = "blurry, lowres"
	r.Width, r.Height = 512, 512
	r.Steps = 8
	return r
}

func randomSeed() int64 { return rand.Int64N(core.MaxSeed + 1) }

func formatFloat(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// content lays the form out in groups, each field with its error label under it.
func (f *form) content() fyne.CanvasObject {
	field := func(name string, w fyne.CanvasObject) fyne.CanvasObject {
		return container.NewVBox(caption(fieldTitles[name]), w, f.errs[name])
	}
	narrow := func(o fyne.CanvasObject, width float32) fyne.CanvasObject {
		return container.NewGridWrap(fyne.NewSize(width, o.MinSize().Height), o)
	}
	sliderRow := func(e *submitEntry, s *widget.Slider) fyne.CanvasObject {
		return container.NewBorder(nil, nil, nil, narrow(e, 76), s)
	}
	times := widget.NewLabel("×")
	sizeRow := container.New(&sizeLayout{}, f.width, times, f.height, f.swap)
	return container.NewVBox(
		field(fPrompt, f.prompt),
		field(fNegative, f.negative),
		widget.NewSeparator(),
		caption(fieldTitles[fModel]),
		container.NewBorder(nil, nil, nil, container.NewHBox(f.browse, f.feat.modelFile, f.feat.addFolder), f.model),
		f.modelHint,
		f.errs[fModel],
		widget.NewSeparator(),
		field(fSteps, sliderRow(f.steps, f.stepsSlider)),
		field(fCFG, sliderRow(f.cfg, f.cfgSlider)),
		widget.NewSeparator(),
		caption("Size"),
		f.size,
		sizeRow,
		f.errs[fWidth], f.errs[fHeight],
		widget.NewSeparator(),
		caption("Seed (-1 = random)"),
		container.NewBorder(nil, nil, nil, container.NewHBox(f.dice, f.anySeed), f.seed),
		f.errs[fSeed],
		widget.NewSeparator(),
		f.feat.content(),
	)
}

// sizeLayout puts width × height [swap] in a row: the two entries share the
// space, the "×" and the button keep their own width.
type sizeLayout struct{}

func (*sizeLayout) MinSize(objs []fyne.CanvasObject) fyne.Size {
	w, h := float32(0), float32(0)
	for _, o := range objs {
		m := o.MinSize()
		w += m.Width + theme.Padding()
		h = max(h, m.Height)
	}
	return fyne.NewSize(w, h)
}

func (*sizeLayout) Layout(objs []fyne.CanvasObject, size fyne.Size) {
	width, times, height, swap := objs[0], objs[1], objs[2], objs[3]
	pad := theme.Padding()
	tw, sw := times.MinSize().Width, swap.MinSize().Width
	ew := (size.Width - tw - sw - 3*pad) / 2
	x := float32(0)
	for _, p := range []struct {
		o fyne.CanvasObject
		w float32
	}{{width, ew}, {times, tw}, {height, ew}, {swap, sw}} {
		p.o.Move(fyne.NewPos(x, 0))
		p.o.Resize(fyne.NewSize(p.w, size.Height))
		x += p.w + pad
	}
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

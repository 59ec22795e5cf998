package ui

import (
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/canvas"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"
	"github.com/sqweek/dialog"

	"atelier/core"
)

// Field names of the feature sections, as core.FieldError names them.
const (
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

var sectionTitles = map[string]string{
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
	if t, ok := sectionTitles[field]; ok {
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

// Labels of the "none" choices.
const (
	noneChoice   = "(none)"
	browseChoice = "Browse…"
)

// sections are the collapsible feature groups under the basic fields:
// sampling, LoRA, ControlNet, refiner, VAE, img2img/inpaint, upscale and batch.
// They belong to a form and are used from the UI goroutine only.
type sections struct {
	f        *form
	do       func(func())
	onSubmit func()

	accordion *widget.Accordion

	schedule *widget.Select

	loraBox *fyne.Container
	loras   []*loraRow
	addLoRA *widget.Button

	cnBox         *fyne.Container
	cns           []*cnRow
	addCN         *widget.Button
	controlImages *fyne.Container
	controlTitle  *widget.Label

	refiner       *widget.SelectEntry
	refinerSwitch *submitEntry
	refinerSlider *widget.Slider

	vae *widget.SelectEntry

	initImage      *widget.Entry
	strength       *submitEntry
	strengthSlider *widget.Slider
	mask           *widget.Entry
	paintMask      *widget.Button
	maskBlur       *submitEntry
	maskPadding    *submitEntry

	upscaler *widget.SelectEntry
	upscale  *submitEntry

	hires               *submitEntry
	hiresSteps          *submitEntry
	hiresStrength       *submitEntry
	hiresStrengthSlider *widget.Slider
	hiresHint           *widget.Label // "1024 × 1024 → 1536 × 1536"

	batchCount *submitEntry
	vaeNote    *widget.Label

	// modelFile chooses a single-file .safetensors checkpoint; addFolder adds
	// a folder to the model library.
	modelFile, addFolder *widget.Button

	caps     *core.Capabilities
	lib      *core.Library
	settings core.SettingsStore // where the model folders are kept; nil: no library
	// choices remembers each drop-down's options (SelectEntry does not say).
	choices map[*widget.SelectEntry][]string

	// chooseFile and chooseFolder ask with the native dialogs; they block, so
	// they run off the UI goroutine. Tests replace them.
	chooseFile   func(title string, exts ...string) (string, error)
	chooseFolder func(title string) (string, error)
	// maskDir is where painted masks are written.
	maskDir string
	// openPainter opens the mask painter; tests call paint directly.
	painter *maskPainterWindow
	// onNote shows a line in the status bar.
	onNote func(string)
}

func newSections(f *form, onSubmit func(), do func(func())) *sections {
	s := &sections{f: f, do: do, onSubmit: onSubmit, maskDir: filepath.Join(core.DefaultPaths().Cache, "masks"),
		choices: map[*widget.SelectEntry][]string{}}
	s.chooseFile = func(t string, exts ...string) (string, error) {
		d := dialog.File().Title(t)
		if len(exts) > 0 {
			d = d.Filter(strings.Join(exts, ", "), exts...)
		}
		return d.Load()
	}
	s.chooseFolder = func(t string) (string, error) { return dialog.Directory().Title(t).Browse() }

	s.schedule = widget.NewSelect(nil, func(string) { f.clearError(fSchedule) })
	f.scheduler.OnChanged = func(string) { f.clearError(fScheduler); s.updateSchedules() }

	s.loraBox = container.NewVBox()
	s.addLoRA = widget.NewButtonWithIcon("Add LoRA", theme.ContentAddIcon(), func() {
		s.addLoRARow(core.LoRA{Path: core.TinyLoRA, Weight: 1})
	})
	s.cnBox = container.NewVBox()
	s.addCN = widget.NewButtonWithIcon("Add ControlNet", theme.ContentAddIcon(), func() {
		s.addCNRow(core.DefaultControlNet())
	})
	s.controlTitle = widget.NewLabel("")
	s.controlTitle.SizeName = theme.SizeNameCaptionText
	s.controlTitle.Hide()
	s.controlImages = container.NewGridWrap(fyne.NewSize(96, 96))
	s.controlImages.Hide()

	s.refiner = s.modelChoice(fRefiner, "none, tiny-refiner, or a refiner folder", true)
	s.refinerSwitch = s.numberEntry(fRefinerSwitch)
	s.refinerSlider = widget.NewSlider(0.05, 0.95)
	s.refinerSlider.Step = 0.05
	f.linkSlider(fRefinerSwitch, s.refinerSwitch, s.refinerSlider, formatHundredths)

	s.vae = s.modelChoice(fVAE, "none = the model's own, tiny-vae, or a VAE", true)
	s.vaeNote = widget.NewLabel("")
	s.vaeNote.Importance = widget.WarningImportance
	s.vaeNote.Wrapping = fyne.TextWrapWord
	s.vaeNote.Hide()

	s.initImage = s.pathEntry(fInitImage, "an image to start from (img2img)")
	s.strength = s.numberEntry(fStrength)
	s.strengthSlider = widget.NewSlider(0.05, 1)
	s.strengthSlider.Step = 0.05
	f.linkSlider(fStrength, s.strength, s.strengthSlider, formatHundredths)
	s.mask = s.pathEntry(fMask, "white = repaint; from a file or painted")
	s.paintMask = widget.NewButtonWithIcon("Paint…", theme.ColorPaletteIcon(), s.openPainter)
	s.maskBlur = s.numberEntry(fMaskBlur)
	s.maskPadding = s.numberEntry(fMaskPadding)

	s.upscaler = s.modelChoice(fUpscaler, "none, lanczos, or an ESRGAN .safetensors", false)
	s.upscale = s.numberEntry(fUpscale)

	s.hires = s.numberEntry(fHires)
	s.hires.OnChanged = func(string) { f.clearError(fHires); s.updateHiresHint() }
	s.hiresHint = widget.NewLabel("")
	s.hiresHint.Importance = widget.LowImportance
	s.hires.SetPlaceHolder(fmt.Sprintf("off; %g–%g, e.g. %g", core.MinHires, core.MaxHires, core.DefaultHiresScale))
	s.hiresSteps = s.numberEntry(fHiresSteps)
	s.hiresSteps.SetPlaceHolder("the job's steps")
	s.hiresStrength = s.numberEntry(fHiresStrength)
	s.hiresStrengthSlider = widget.NewSlider(0.05, 1)
	s.hiresStrengthSlider.Step = 0.05
	f.linkSlider(fHiresStrength, s.hiresStrength, s.hiresStrengthSlider, formatHundredths)

	s.batchCount = s.numberEntry(fBatchCount)
	s.batchCount.SetPlaceHolder("1")

	s.modelFile = s.browseButton(false, "Choose an SDXL checkpoint (.safetensors)", f.model.SetText, "safetensors")
	s.addFolder = widget.NewButtonWithIcon("", theme.StorageIcon(), func() {
		s.browse(func() (string, error) { return s.chooseFolder("Add a folder of models to the library") }, s.addLibraryFolder)
	})
	for name := range sectionTitles {
		f.addErrorLabel(name)
	}
	s.setLibrary(nil)
	s.setCapabilities(nil)
	return s
}

// numberEntry is a one-line entry whose error clears on edit.
func (s *sections) numberEntry(field string) *submitEntry {
	e := newSubmitEntry(false, s.onSubmit)
	e.OnChanged = func(string) { s.f.clearError(field) }
	s.f.entries[field] = &e.Entry
	return e
}

// pathEntry is an entry for a file path.
func (s *sections) pathEntry(field, placeholder string) *widget.Entry {
	e := widget.NewEntry()
	e.SetPlaceHolder(placeholder)
	e.AlwaysShowValidationError = true
	e.OnChanged = func(string) { s.f.clearError(field) }
	s.f.entries[field] = e
	return e
}

// modelChoice is a drop-down of library entries that also takes a typed path.
func (s *sections) modelChoice(field, placeholder string, _ bool) *widget.SelectEntry {
	e := widget.NewSelectEntry(nil)
	e.SetPlaceHolder(placeholder)
	e.AlwaysShowValidationError = true
	e.OnChanged = func(string) { s.f.clearError(field) }
	s.f.entries[field] = &e.Entry
	return e
}

// browse runs a native chooser off the UI goroutine and puts the answer into set.
func (s *sections) browse(choose func() (string, error), set func(string)) {
	go func() {
		p, err := choose()
		if err == nil && p != "" {
			s.do(func() { set(p) })
		}
	}()
}

func (s *sections) browseButton(folder bool, titleText string, set func(string), exts ...string) *widget.Button {
	icon := theme.FileIcon()
	if folder {
		icon = theme.FolderOpenIcon()
	}
	return widget.NewButtonWithIcon("", icon, func() {
		if folder {
			s.browse(func() (string, error) { return s.chooseFolder(titleText) }, set)
		} else {
			s.browse(func() (string, error) { return s.chooseFile(titleText, exts...) }, set)
		}
	})
}

// setLibrary fills the drop-downs from the model library (nil: tiny parts only).
func (s *sections) setLibrary(lib *core.Library) {
	s.lib = lib
	s.setChoices(s.refiner, append([]string{core.TinyRefiner}, lib.Paths(core.KindRefiner)...))
	s.setChoices(s.vae, append([]string{core.TinyVAE}, lib.Paths(core.KindVAE)...))
	s.setChoices(s.upscaler, append([]string{core.LanczosUpscaler, core.TinyUpscaler}, lib.Paths(core.KindUpscaler)...))
	for _, r := range s.loras {
		s.setChoices(r.path, s.loraOptions())
	}
	for _, r := range s.cns {
		s.setChoices(r.model, s.cnOptions())
	}
	if lib != nil {
		// Recent models first, then the demo parts and the library's checkpoints.
		models := append([]string(nil), s.f.models...)
		for _, m := range append([]string{core.TinyModel, core.TinySingleFile}, lib.Paths(core.KindCheckpoint)...) {
			if !containsString(models, m) {
				models = append(models, m)
			}
		}
		s.setChoices(s.f.model, models)
	}
}

// setChoices sets a drop-down's options and remembers them.
func (s *sections) setChoices(e *widget.SelectEntry, opts []string) {
	s.choices[e] = opts
	e.SetOptions(opts)
}

func (s *sections) loraOptions() []string {
	return append([]string{core.TinyLoRA}, s.lib.Paths(core.KindLoRA)...)
}

func (s *sections) cnOptions() []string {
	return append([]string{core.TinyControlNet}, s.lib.Paths(core.KindControlNet)...)
}

// setCapabilities builds the scheduler, schedule and ControlNet type choices
// from the worker's hello, or from core's static lists before a worker started.
func (s *sections) setCapabilities(c *core.Capabilities) {
	s.caps = c
	scheds := core.Schedulers
	if c != nil && len(c.Schedulers) > 0 {
		scheds = c.Schedulers
	}
	sel := s.f.scheduler.Selected
	s.f.scheduler.SetOptions(schedulerLabels(scheds))
	if sel != "" {
		s.f.scheduler.SetSelected(sel) // kept even if this worker lacks it: validation says so
	}
	for _, r := range s.cns {
		r.kind.SetOptions(s.cnTypes())
	}
	s.updateSchedules()
}

func (s *sections) cnTypes() []string {
	if s.caps != nil && len(s.caps.ControlNetTypes) > 0 {
		return s.caps.ControlNetTypes
	}
	return core.ControlNetTypes
}

// updateSchedules offers the schedules the chosen scheduler takes.
func (s *sections) updateSchedules() {
	opts := []string{core.ScheduleNames[""]}
	allowed := core.Schedules[1:]
	if s.caps != nil && s.caps.Schedules != nil {
		allowed = s.caps.Schedules[schedulerID(s.f.scheduler.Selected)]
	}
	for _, sc := range allowed {
		opts = append(opts, core.ScheduleNames[sc])
	}
	cur := s.schedule.Selected
	s.schedule.SetOptions(opts)
	if cur == "" || !containsString(opts, cur) {
		cur = opts[0]
	}
	s.schedule.SetSelected(cur)
}

// schedulerLabel is the name the sampler drop-down shows for a scheduler id:
// A1111's ("DPM++ 2M"), or the id itself for one core does not name.
func schedulerLabel(id string) string {
	if n, ok := core.SamplerNames[id]; ok {
		return n
	}
	return id
}

func schedulerLabels(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = schedulerLabel(id)
	}
	return out
}

// schedulerID is the request's scheduler id for a label of the drop-down.
func schedulerID(label string) string {
	for id, n := range core.SamplerNames {
		if n == label {
			return id
		}
	}
	return label
}

func scheduleID(name string) string {
	for id, n := range core.ScheduleNames {
		if n == name {
			return id
		}
	}
	return name
}

// loraRow is one LoRA: a path (library choice or typed) and a weight.
type loraRow struct {
	path   *widget.SelectEntry
	weight *submitEntry
	slider *widget.Slider
	remove *widget.Button
	err    *widget.Label
	box    fyne.CanvasObject
}

func (s *sections) addLoRARow(l core.LoRA) *loraRow {
	r := &loraRow{}
	r.path = widget.NewSelectEntry(nil)
	s.setChoices(r.path, s.loraOptions())
	r.path.SetPlaceHolder("tiny-lora or a LoRA .safetensors")
	r.path.AlwaysShowValidationError = true
	r.weight = newSubmitEntry(false, s.onSubmit)
	r.slider = widget.NewSlider(core.MinLoRAWeight, core.MaxLoRAWeight)
	r.slider.Step = 0.05
	r.err = errLabel()
	r.remove = widget.NewButtonWithIcon("", theme.DeleteIcon(), func() { s.removeLoRA(r) })
	browse := s.browseButton(false, "Choose a LoRA (.safetensors)", func(p string) { r.path.SetText(p) }, "safetensors")
	r.path.OnChanged = func(string) { r.err.Hide() }
	s.f.linkSliderLabel(r.err, r.weight, r.slider, formatHundredths)
	r.path.SetText(l.Path)
	r.weight.SetText(formatFloat(l.Weight))
	r.box = container.NewVBox(
		container.NewBorder(nil, nil, nil, container.NewHBox(browse, r.remove), r.path),
		container.NewBorder(nil, nil, caption("weight"), narrowEntry(r.weight), r.slider),
		r.err)
	s.loras = append(s.loras, r)
	s.reindex()
	return r
}

func (s *sections) removeLoRA(r *loraRow) {
	for i, x := range s.loras {
		if x == r {
			s.loras = append(s.loras[:i], s.loras[i+1:]...)
			break
		}
	}
	s.reindex()
}

// cnRow is one ControlNet unit.
type cnRow struct {
	kind                *widget.Select
	model               *widget.SelectEntry
	image               *widget.Entry
	scale, start, end   *submitEntry
	cannyLow, cannyHigh *submitEntry
	canny               *fyne.Container
	remove              *widget.Button
	err                 *widget.Label
	box                 fyne.CanvasObject
}

func (s *sections) addCNRow(c core.ControlNet) *cnRow {
	r := &cnRow{err: errLabel()}
	clear := func(string) { r.err.Hide() }
	r.kind = widget.NewSelect(s.cnTypes(), func(k string) {
		r.err.Hide()
		if r.canny != nil {
			if k == "canny" {
				r.canny.Show()
			} else {
				r.canny.Hide()
			}
		}
	})
	r.model = widget.NewSelectEntry(nil)
	s.setChoices(r.model, s.cnOptions())
	r.model.SetPlaceHolder("tiny-controlnet or a ControlNet folder")
	r.model.OnChanged = clear
	r.image = widget.NewEntry()
	r.image.SetPlaceHolder("control image (resized to the output size)")
	r.image.OnChanged = clear
	num := func() *submitEntry {
		e := newSubmitEntry(false, s.onSubmit)
		e.OnChanged = clear
		return e
	}
	r.scale, r.start, r.end, r.cannyLow, r.cannyHigh = num(), num(), num(), num(), num()
	r.remove = widget.NewButtonWithIcon("", theme.DeleteIcon(), func() { s.removeCN(r) })
	browseModel := s.browseButton(true, "Choose a ControlNet folder", func(p string) { r.model.SetText(p) })
	browseImage := s.browseButton(false, "Choose a control image", func(p string) { r.image.SetText(p) }, "png", "jpg", "jpeg", "webp")
	r.canny = container.NewGridWithColumns(2,
		labelled("low threshold", r.cannyLow), labelled("high threshold", r.cannyHigh))

	r.model.SetText(c.Model)
	r.image.SetText(c.Image)
	r.scale.SetText(formatFloat(c.Scale))
	r.start.SetText(formatFloat(c.Start))
	r.end.SetText(formatFloat(c.End))
	r.cannyLow.SetText(strconv.Itoa(c.CannyLow))
	r.cannyHigh.SetText(strconv.Itoa(c.CannyHigh))
	r.kind.SetSelected(c.Type)

	r.box = container.NewVBox(
		container.NewBorder(nil, nil, caption("type"), r.remove, r.kind),
		container.NewBorder(nil, nil, nil, browseModel, r.model),
		container.NewBorder(nil, nil, nil, browseImage, r.image),
		container.NewGridWithColumns(3, labelled("scale", r.scale), labelled("start", r.start), labelled("end", r.end)),
		r.canny,
		r.err,
		widget.NewSeparator())
	s.cns = append(s.cns, r)
	s.reindex()
	return r
}

func (s *sections) removeCN(r *cnRow) {
	for i, x := range s.cns {
		if x == r {
			s.cns = append(s.cns[:i], s.cns[i+1:]...)
			break
		}
	}
	s.reindex()
}

var loraFields = []string{"path", "weight"}
var cnFields = []string{"type", "model", "image", "scale", "start", "end", "canny_low", "canny_high"}

// reindex registers each row's error label under its current field names
// (loras[0].weight …) and rebuilds the lists, after a row came or went.
func (s *sections) reindex() {
	for name := range s.f.errs {
		if reRowField.MatchString(name) {
			delete(s.f.errs, name)
		}
	}
	objs := make([]fyne.CanvasObject, 0, len(s.loras))
	for i, r := range s.loras {
		for _, fl := range loraFields {
			s.f.errs[fmt.Sprintf("loras[%d].%s", i, fl)] = r.err
		}
		objs = append(objs, r.box)
	}
	s.loraBox.Objects = objs
	s.loraBox.Refresh()
	objs = make([]fyne.CanvasObject, 0, len(s.cns))
	for i, r := range s.cns {
		for _, fl := range cnFields {
			s.f.errs[fmt.Sprintf("controlnets[%d].%s", i, fl)] = r.err
		}
		objs = append(objs, r.box)
	}
	s.cnBox.Objects = objs
	s.cnBox.Refresh()
	if len(s.loras) >= core.MaxLoRAs {
		s.addLoRA.Disable()
	} else {
		s.addLoRA.Enable()
	}
	if len(s.cns) >= core.MaxControlNets {
		s.addCN.Disable()
	} else {
		s.addCN.Enable()
	}
}

// set fills the sections from a request.
func (s *sections) set(r core.Request) {
	name := core.ScheduleNames[r.Schedule]
	if name == "" {
		name = r.Schedule
	}
	s.updateSchedules()
	s.schedule.SetSelected(name)
	s.loras = nil
	for _, l := range r.LoRAs {
		s.addLoRARow(l)
	}
	s.cns = nil
	for _, c := range r.ControlNets {
		s.addCNRow(c)
	}
	s.reindex()
	s.refiner.SetText(r.Refiner)
	sw := r.RefinerSwitch
	if sw == 0 {
		sw = core.DefaultRefinerSwitch
	}
	s.refinerSwitch.SetText(formatFloat(sw))
	s.vae.SetText(r.VAE)
	s.initImage.SetText(r.InitImage)
	st := r.Strength
	if st == 0 {
		st = core.DefaultStrength
	}
	s.strength.SetText(formatFloat(st))
	s.mask.SetText(r.MaskImage)
	blur := core.DefaultMaskBlur
	if r.MaskBlur != nil {
		blur = *r.MaskBlur
	}
	s.maskBlur.SetText(strconv.Itoa(blur))
	s.maskPadding.SetText(strconv.Itoa(r.MaskPadding))
	s.upscaler.SetText(r.Upscaler)
	up := r.Upscale
	if up == 0 {
		up = core.DefaultUpscale
	}
	s.upscale.SetText(formatFloat(up))
	s.hires.SetText("")
	if r.HiresScale != 0 {
		s.hires.SetText(formatFloat(r.HiresScale))
	}
	s.hiresSteps.SetText("")
	if r.HiresSteps != 0 {
		s.hiresSteps.SetText(strconv.Itoa(r.HiresSteps))
	}
	hs := r.HiresStrength
	if hs == 0 {
		hs = core.DefaultHiresStrength
	}
	s.hiresStrength.SetText(formatFloat(hs))
	if strings.TrimSpace(s.batchCount.Text) == "" {
		s.batchCount.SetText("1")
	}
}

// read puts the sections' values into r; text that is not a number is
// reported against its field.
func (s *sections) read(r *core.Request, errs *[]*core.FieldError) {
	bad := func(field, format string, args ...any) {
		*errs = append(*errs, &core.FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
	}
	float := func(field, text string) float64 {
		v, err := strconv.ParseFloat(strings.TrimSpace(text), 64)
		if err != nil {
			bad(field, "must be a number, got %q", text)
		}
		return v
	}
	integer := func(field, text string) int {
		v, err := strconv.Atoi(strings.TrimSpace(text))
		if err != nil {
			bad(field, "must be a whole number, got %q", text)
		}
		return v
	}
	r.Schedule = scheduleID(s.schedule.Selected)
	for i, row := range s.loras {
		r.LoRAs = append(r.LoRAs, core.LoRA{Path: strings.TrimSpace(row.path.Text),
			Weight: float(fmt.Sprintf("loras[%d].weight", i), row.weight.Text)})
	}
	for i, row := range s.cns {
		n := func(f string) string { return fmt.Sprintf("controlnets[%d].%s", i, f) }
		c := core.ControlNet{Type: row.kind.Selected, Model: strings.TrimSpace(row.model.Text),
			Image: strings.TrimSpace(row.image.Text),
			Scale: float(n("scale"), row.scale.Text), Start: float(n("start"), row.start.Text),
			End: float(n("end"), row.end.Text), CannyLow: core.DefaultCannyLow, CannyHigh: core.DefaultCannyHigh}
		if c.Type == "canny" {
			c.CannyLow = integer(n("canny_low"), row.cannyLow.Text)
			c.CannyHigh = integer(n("canny_high"), row.cannyHigh.Text)
		}
		r.ControlNets = append(r.ControlNets, c)
	}
	if r.Refiner = strings.TrimSpace(s.refiner.Text); r.Refiner != "" {
		r.RefinerSwitch = float(fRefinerSwitch, s.refinerSwitch.Text)
		if r.RefinerSwitch == 0 {
			bad(fRefinerSwitch, "must be above 0 and below 1, got 0")
		}
	}
	r.VAE = strings.TrimSpace(s.vae.Text)
	if r.InitImage = strings.TrimSpace(s.initImage.Text); r.InitImage != "" {
		r.Strength = float(fStrength, s.strength.Text)
		if r.Strength == 0 {
			bad(fStrength, "must be above 0 and at most 1, got 0")
		}
	}
	if r.MaskImage = strings.TrimSpace(s.mask.Text); r.MaskImage != "" {
		r.MaskBlur = core.IntPtr(integer(fMaskBlur, s.maskBlur.Text))
		if t := strings.TrimSpace(s.maskPadding.Text); t != "" {
			r.MaskPadding = integer(fMaskPadding, t)
		}
	}
	if r.Upscaler = strings.TrimSpace(s.upscaler.Text); r.Upscaler != "" {
		r.Upscale = float(fUpscale, s.upscale.Text)
	}
	if t := strings.TrimSpace(s.hires.Text); t != "" {
		// 0 reads as "off" on the wire: a typed 0 is refused rather than dropped.
		if r.HiresScale = float(fHires, t); r.HiresScale == 0 {
			bad(fHires, "must be between %g and %g (leave it empty for no hires pass), got 0", core.MinHires, core.MaxHires)
		}
		if t := strings.TrimSpace(s.hiresSteps.Text); t != "" {
			r.HiresSteps = integer(fHiresSteps, t)
		}
		if r.HiresStrength = float(fHiresStrength, s.hiresStrength.Text); r.HiresStrength == 0 {
			bad(fHiresStrength, "must be above 0 and at most 1, got 0")
		}
	}
}

// updateHiresHint shows the size the hires pass will make, when the factor and
// the size read as numbers.
func (s *sections) updateHiresHint() {
	r := core.Request{}
	var err1, err2, err3 error
	r.HiresScale, err1 = strconv.ParseFloat(strings.TrimSpace(s.hires.Text), 64)
	r.Width, err2 = strconv.Atoi(strings.TrimSpace(s.f.width.Text))
	r.Height, err3 = strconv.Atoi(strings.TrimSpace(s.f.height.Text))
	if err1 != nil || err2 != nil || err3 != nil || r.HiresScale < core.MinHires || r.HiresScale > core.MaxHires || r.Width <= 0 || r.Height <= 0 {
		s.hiresHint.SetText("")
		return
	}
	w, h := r.HiresSize()
	s.hiresHint.SetText(fmt.Sprintf("%d × %d → %d × %d", r.Width, r.Height, w, h))
}

// batchCount is the number of jobs one Generate runs, or an error naming the field.
func (s *sections) count() (int, *core.FieldError) {
	t := strings.TrimSpace(s.batchCount.Text)
	if t == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(t)
	if err != nil || n < core.MinBatchCount || n > core.MaxBatchCount {
		return 1, &core.FieldError{Field: fBatchCount,
			Message: fmt.Sprintf("must be a whole number from %d to %d, got %q", core.MinBatchCount, core.MaxBatchCount, t)}
	}
	return n, nil
}

// showResult shows what a finished job reports beyond its images: the
// preprocessed control images and a VAE that fell back to float32.
func (s *sections) showResult(out *core.JobOutcome) {
	if out == nil {
		return
	}
	objs := make([]fyne.CanvasObject, 0, len(out.ControlImages))
	for _, p := range out.ControlImages {
		img := canvas.NewImageFromFile(p)
		img.FillMode = canvas.ImageFillContain
		img.SetMinSize(fyne.NewSize(96, 96))
		objs = append(objs, img)
	}
	s.controlImages.Objects = objs
	s.controlImages.Refresh()
	if len(objs) > 0 {
		s.controlTitle.SetText("What the ControlNets saw (last job)")
		s.controlTitle.Show()
		s.controlImages.Show()
	} else {
		s.controlTitle.Hide()
		s.controlImages.Hide()
	}
	if out.Metrics != nil && out.Metrics.VAEFallback {
		s.vaeNote.SetText("The VAE gave NaNs at half precision and was rerun in float32 (slower). An fp16-fixed VAE avoids this.")
		s.vaeNote.Show()
	} else {
		s.vaeNote.Hide()
	}
}

// content lays the sections out as an accordion, all closed but the ones in use.
func (s *sections) content() fyne.CanvasObject {
	errs := s.f.errs
	field := func(name string, w fyne.CanvasObject) fyne.CanvasObject {
		return container.NewVBox(caption(title(name)), w, errs[name])
	}
	sampling := container.NewVBox(
		container.NewGridWithColumns(2,
			container.NewVBox(caption(fieldTitles[fScheduler]), s.f.scheduler),
			container.NewVBox(caption(sectionTitles[fSchedule]), s.schedule)),
		errs[fScheduler], errs[fSchedule])
	lora := container.NewVBox(s.loraBox, errs[fLoRAs], s.addLoRA)
	cn := container.NewVBox(s.cnBox, errs[fControlNets], s.addCN, s.controlTitle, s.controlImages)
	refiner := container.NewVBox(
		field(fRefiner, container.NewBorder(nil, nil, nil,
			s.browseButton(true, "Choose an SDXL refiner folder", s.refiner.SetText), s.refiner)),
		field(fRefinerSwitch, container.NewBorder(nil, nil, nil, narrowEntry(s.refinerSwitch), s.refinerSlider)))
	vae := container.NewVBox(
		field(fVAE, container.NewBorder(nil, nil, nil, container.NewHBox(
			s.browseButton(false, "Choose a VAE (.safetensors)", s.vae.SetText, "safetensors"),
			s.browseButton(true, "Choose a VAE folder", s.vae.SetText)), s.vae)),
		s.vaeNote)
	img2img := container.NewVBox(
		field(fInitImage, container.NewBorder(nil, nil, nil,
			s.browseButton(false, "Choose an init image", s.initImage.SetText, "png", "jpg", "jpeg", "webp"), s.initImage)),
		field(fStrength, container.NewBorder(nil, nil, nil, narrowEntry(s.strength), s.strengthSlider)),
		field(fMask, container.NewBorder(nil, nil, nil, container.NewHBox(
			s.browseButton(false, "Choose a mask image", s.mask.SetText, "png", "jpg", "jpeg", "webp"), s.paintMask), s.mask)),
		container.NewGridWithColumns(2, field(fMaskBlur, s.maskBlur), field(fMaskPadding, s.maskPadding)))
	hires := container.NewVBox(
		widget.NewLabel("Enlarges the text-to-image result with Lanczos and draws it again with img2img, "+
			"so that a large image gets SDXL's composition and the model's own detail."),
		container.NewGridWithColumns(2, field(fHires, s.hires), field(fHiresSteps, s.hiresSteps)),
		s.hiresHint,
		field(fHiresStrength, container.NewBorder(nil, nil, nil, narrowEntry(s.hiresStrength), s.hiresStrengthSlider)))
	hires.Objects[0].(*widget.Label).Wrapping = fyne.TextWrapWord
	upscale := container.NewVBox(
		field(fUpscaler, container.NewBorder(nil, nil, nil,
			s.browseButton(false, "Choose an upscaler model (.safetensors)", s.upscaler.SetText, "safetensors"), s.upscaler)),
		field(fUpscale, s.upscale))
	batch := container.NewVBox(
		container.NewGridWithColumns(2,
			container.NewVBox(caption("Batch size (images per job)"), s.f.batch),
			container.NewVBox(caption("Batch count (jobs)"), s.batchCount)),
		errs[fBatch], errs[fBatchCount])
	s.accordion = widget.NewAccordion(
		widget.NewAccordionItem("Sampling", sampling),
		widget.NewAccordionItem("LoRA", lora),
		widget.NewAccordionItem("ControlNet", cn),
		widget.NewAccordionItem("Refiner", refiner),
		widget.NewAccordionItem("VAE", vae),
		widget.NewAccordionItem("img2img / Inpaint", img2img),
		widget.NewAccordionItem("Hires fix", hires),
		widget.NewAccordionItem("Upscale", upscale),
		widget.NewAccordionItem("Batch", batch),
	)
	s.accordion.MultiOpen = true
	s.accordion.Open(0)
	return s.accordion
}

// openSectionOf opens the accordion item that holds field, so that an error
// shown there is seen.
func (s *sections) openSectionOf(field string) {
	if s.accordion == nil {
		return
	}
	idx := map[string]int{fScheduler: 0, fSchedule: 0, fLoRAs: 1, fControlNets: 2, fRefiner: 3, fRefinerSwitch: 3,
		fVAE: 4, fInitImage: 5, fStrength: 5, fMask: 5, fMaskBlur: 5, fMaskPadding: 5,
		fHires: 6, fHiresSteps: 6, fHiresStrength: 6, fUpscaler: 7, fUpscale: 7, fBatch: 8, fBatchCount: 8}
	i, ok := idx[field]
	if m := reRowField.FindStringSubmatch(field); m != nil {
		i, ok = 1, true
		if m[1] == fControlNets {
			i = 2
		}
	}
	if ok {
		s.accordion.Open(i)
	}
}

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

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

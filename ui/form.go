package ui

import (
	"encoding/json"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/widget"
	"github.com/sqweek/dialog"

	"atelier/core/jobs"
	"atelier/core/library"
	"atelier/core/protocol"
	"atelier/core/request"
)

const prefsKey = "atelier.form.v1"

// form is the request form: the basic fields on top, then the feature
// sections in an accordion, all closed but the ones in use. Each section is a
// type of its own (section_*.go); the form puts them together, reads them
// into one request and shows its errors. UI goroutine only.
type form struct {
	fields *formFields

	prompts *promptSection
	model   *modelSection
	steps   *stepsSection
	size    *sizeSection
	seed    *seedSection

	sampling   *samplingSection
	lora       *loraSection
	controlNet *controlNetSection
	refiner    *refinerSection
	vae        *vaeSection
	img2img    *img2imgSection
	hires      *hiresSection
	upscale    *upscaleSection
	batch      *batchSection

	// folded are the accordion's sections, in its order.
	folded    []foldedSection
	accordion *widget.Accordion
	folds     fyne.CanvasObject // the accordion in its headers' theme

	lib      *library.Library
	settings library.SettingsStore // where the model folders are kept; nil: no library
	// ownModels is Atelier's own models folder, scanned first always; empty in tests without one.
	ownModels string
	// onNote shows a line in the status bar.
	onNote func(string)
	// onLayout lays out what holds the form after the form changed height.
	onLayout func()
	// onLibrary is told of each finished scan of the model library, on the UI goroutine.
	onLibrary func(*library.Library)
}

func newForm(onSubmit func(), do func(func())) *form {
	ff := &formFields{errs: map[string]*widget.Label{}, entries: map[string]*widget.Entry{},
		choices: map[*escSelectEntry][]string{}, onSubmit: onSubmit, do: do}
	ff.chooseFile = func(t string, exts ...string) (string, error) {
		d := dialog.File().Title(t)
		if len(exts) > 0 {
			d = d.Filter(strings.Join(exts, ", "), exts...)
		}
		return d.Load()
	}
	ff.chooseFolder = func(t string) (string, error) { return dialog.Directory().Title(t).Browse() }
	for name := range fieldTitles {
		ff.errorLabel(name)
	}

	f := &form{fields: ff}
	ff.reveal = f.openSectionOf
	f.prompts = newPromptSection(ff)
	f.model = newModelSection(ff, f.addLibraryFolder)
	f.steps = newStepsSection(ff)
	f.size = newSizeSection(ff)
	f.seed = newSeedSection(ff)
	f.sampling = newSamplingSection(ff)
	f.lora = newLoRASection(ff)
	f.controlNet = newControlNetSection(ff)
	f.refiner = newRefinerSection(ff)
	f.vae = newVAESection(ff)
	f.img2img = newImg2imgSection(ff)
	f.hires = newHiresSection(ff, f.size)
	f.size.onChange = f.hires.updateHint
	f.upscale = newUpscaleSection(ff)
	f.batch = newBatchSection(ff)
	f.folded = []foldedSection{f.sampling, f.lora, f.controlNet, f.refiner, f.vae, f.img2img, f.hires, f.upscale, f.batch}
	f.setLibrary(nil)
	f.setCapabilities(nil)
	return f
}

// set fills the widgets from a request.
func (f *form) set(r request.Request) {
	f.prompts.set(r)
	f.model.set(r)
	f.sampling.setScheduler(r)
	f.steps.set(r)
	f.size.set(r)
	f.seed.set(r)
	f.batch.setSize(r)
	for _, s := range f.folded {
		s.set(r)
	}
	f.clearErrors()
	f.updateHeaders()
}

// request reads the widgets into a request and validates it. Text that is not
// a number is reported against its field like any other invalid value.
func (f *form) request() (request.Request, *request.ValidationError) {
	r := request.DefaultRequest()
	var errs []*request.FieldError
	for _, s := range []formSection{f.prompts, f.model, f.sampling, f.steps, f.size, f.seed,
		f.lora, f.controlNet, f.refiner, f.vae, f.img2img, f.upscale, f.hires, f.batch} {
		s.read(&r, &errs)
	}
	// Previews are cheap latent→RGB files; the UI coalesces them to the frame rate.
	r.PreviewEvery = 1

	parsed := &request.ValidationError{Fields: errs}
	if err := r.Validate(); err != nil {
		if v, ok := request.AsValidation(err); ok {
			// A field that failed to parse already has the clearer message.
			for _, fe := range v.Fields {
				if parsed.Field(fe.Field) == nil {
					parsed.Fields = append(parsed.Fields, fe)
				}
			}
		}
	}
	if len(parsed.Fields) > 0 {
		return r, parsed
	}
	return r, nil
}

// count is the number of jobs one Generate runs (the batch count).
func (f *form) count() (int, *request.FieldError) { return f.batch.count() }

// showErrors puts each field error beside its field and returns the ones the
// form has no place for, so the caller can show them in the status line.
func (f *form) showErrors(v *request.ValidationError) []*request.FieldError {
	f.clearErrors()
	if v == nil {
		return nil
	}
	var rest []*request.FieldError
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
func (f *form) showErrorText(field, msg string) bool { return f.fields.showErrorText(field, msg) }

func (f *form) clearErrors() { f.fields.clearErrors() }

// rememberModel adds a model to the drop-down's recent list.
func (f *form) rememberModel(m string) {
	if m == "" {
		return
	}
	f.model.remember(m)
	if f.lib != nil {
		f.setLibrary(f.lib) // the library's checkpoints follow the recent ones
		return
	}
	f.model.offer(nil)
}

// savedForm is what the app remembers between runs: the last request and the
// models used recently. The first run starts from the tiny demo model.
type savedForm struct {
	Request request.Request `json:"request"`
	Models  []string        `json:"models"`
}

func (f *form) save(p fyne.Preferences, r request.Request) {
	f.rememberModel(r.Model)
	r.PreviewEvery, r.OutputDir = 0, ""
	if b, err := json.Marshal(savedForm{Request: r, Models: f.model.recent}); err == nil {
		p.SetString(prefsKey, string(b))
	}
}

func (f *form) load(p fyne.Preferences) {
	r := firstRunRequest()
	var saved savedForm
	if s := p.String(prefsKey); s != "" && json.Unmarshal([]byte(s), &saved) == nil && saved.Request.Model != "" {
		r = saved.Request
		f.model.recent = saved.Models
	}
	f.set(r)
	f.rememberModel(r.Model)
}

// firstRunRequest is the form a newcomer sees: the tiny demo model, at a size
// and step count that finish in seconds on a CPU, so pressing Generate right away
// shows the whole path working.
func firstRunRequest() request.Request {
	r := request.DefaultRequest()
	r.Prompt = "a lighthouse on a cliff at dusk, volumetric light, detailed"
	r.NegativePrompt = "blurry, lowres"
	r.Width, r.Height = 512, 512
	r.Steps = 8
	return r
}

// setLibrary fills the drop-downs from the model library (nil: tiny parts only).
func (f *form) setLibrary(lib *library.Library) {
	f.lib = lib
	f.refiner.setLibrary(lib)
	f.vae.setLibrary(lib)
	f.upscale.setLibrary(lib)
	f.lora.setLibrary(lib)
	f.controlNet.setLibrary(lib)
	if lib != nil {
		f.model.offer(lib)
	}
}

// setCapabilities builds the scheduler, schedule and ControlNet type choices
// from the worker's hello, or from core's static lists before a worker started.
func (f *form) setCapabilities(c *protocol.Capabilities) {
	f.sampling.setCapabilities(c)
	f.controlNet.setCapabilities(c)
	f.sampling.updateSchedules()
}

// showResult shows what a finished job reports beyond its images: the
// preprocessed control images and a VAE that fell back to float32.
func (f *form) showResult(out *jobs.JobOutcome) {
	if out == nil {
		return
	}
	f.controlNet.showResult(out)
	f.vae.showResult(out)
}

// content lays the form out: the basic fields, each with its error label
// under it, then the accordion of the feature sections.
func (f *form) content() fyne.CanvasObject {
	details := make([]fyne.CanvasObject, len(f.folded))
	for i, s := range f.folded {
		details[i] = s.content()
	}
	f.accordion, f.folds = newFolds(foldedTitles, details)
	f.accordion.Open(0)
	f.fields.onEdit = f.updateHeaders
	f.fields.onLayout = f.relayout
	f.updateHeaders()
	return container.NewVBox(
		f.prompts.content(),
		widget.NewSeparator(),
		f.model.content(),
		widget.NewSeparator(),
		f.steps.content(),
		widget.NewSeparator(),
		f.size.content(),
		widget.NewSeparator(),
		f.seed.content(),
		widget.NewSeparator(),
		f.folds,
	)
}

// relayout lays the accordion out again, then whatever holds the form.
func (f *form) relayout() {
	if f.accordion == nil {
		return
	}
	f.accordion.Refresh()
	if f.onLayout != nil {
		f.onLayout()
	}
}

// foldedTitles are the accordion's headers, in the order of form.folded.
var foldedTitles = []string{"Sampling", "LoRA", "ControlNet", "Refiner", "VAE", "img2img / Inpaint", "Hires fix", "Upscale", "Batch"}

// openSectionOf opens the accordion item that holds field, so that an error
// shown there is seen.
func (f *form) openSectionOf(field string) {
	if f.accordion == nil {
		return
	}
	for i, s := range f.folded {
		if s.owns(field) {
			f.accordion.Open(i)
			return
		}
	}
}

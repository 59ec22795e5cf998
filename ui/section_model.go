package ui

import (
	"slices"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"
	"github.com/sqweek/dialog"

	"atelier/core/library"
	"atelier/core/request"
)

const (
	tinyHint   = "Tiny demo model: noise images, for trying the app"
	folderHint = "A diffusers SDXL folder (model_index.json, unet/, vae/ …); it does best at a 1-megapixel preset with 25–40 steps"
)

// modelSection is the checkpoint: a recent or library model, a typed path,
// or one chosen with the buttons beside it.
type modelSection struct {
	fields *formFields
	entry  *escSelectEntry
	hint   *widget.Label
	browse *tipButton
	// file chooses a single-file .safetensors checkpoint; addFolder adds a
	// folder to the model library.
	file, addFolder *tipButton
	// getModels opens the "Get a real model" panel; shown only with a downloader.
	getModels *widget.Button
	// recent remembers recently used model paths for the drop-down.
	recent []string
}

func newModelSection(ff *formFields, addLibraryFolder func(dir string)) *modelSection {
	m := &modelSection{fields: ff}
	m.entry = newEscSelectEntry([]string{request.TinyModel})
	m.entry.SetPlaceHolder("tiny, or a diffusers folder")
	m.hint = widget.NewLabel("")
	m.hint.SizeName = theme.SizeNameCaptionText
	m.hint.Wrapping = fyne.TextWrapWord
	m.entry.changed(func(string) { ff.clearError(fModel); m.updateHint(); ff.edited() })
	ff.entries[fModel] = &m.entry.Entry
	m.browse = newTipButton(theme.FolderOpenIcon(), "Choose a diffusers model folder", func() {
		// The native picker blocks its caller, so it runs off the UI goroutine.
		go func() {
			dir, err := dialog.Directory().Title("Choose a diffusers model folder").Browse()
			if err == nil && dir != "" {
				ff.do(func() { m.entry.SetText(dir) })
			}
		}()
	})
	m.file = ff.browseButton(false, "Choose an SDXL checkpoint (.safetensors)", m.entry.SetText, "safetensors")
	m.addFolder = newTipButton(theme.StorageIcon(), "Add a folder of models to the library", func() {
		ff.browse(func() (string, error) { return ff.chooseFolder("Add a folder of models to the library") }, addLibraryFolder)
	})
	m.getModels = widget.NewButtonWithIcon("Get models…", theme.DownloadIcon(), nil)
	m.getModels.Importance = widget.LowImportance
	return m
}

func (m *modelSection) updateHint() {
	// The demo model is flagged in amber: its noise images must not be
	// mistaken for a broken install.
	if strings.TrimSpace(m.entry.Text) == request.TinyModel {
		m.hint.Importance = widget.WarningImportance
		m.hint.SetText(tinyHint)
	} else {
		m.hint.Importance = widget.LowImportance
		m.hint.SetText(folderHint)
	}
}

func (m *modelSection) set(r request.Request) {
	m.entry.SetText(r.Model)
	m.updateHint()
}

func (m *modelSection) read(r *request.Request, _ *[]*request.FieldError) {
	r.Model = strings.TrimSpace(m.entry.Text)
}

// remember puts a model first among the recent ones, after the demo model.
func (m *modelSection) remember(model string) {
	list := []string{request.TinyModel}
	if model != request.TinyModel {
		list = append(list, model)
	}
	for _, old := range m.recent {
		if old != model && old != request.TinyModel && len(list) < 8 {
			list = append(list, old)
		}
	}
	m.recent = list
}

// offer fills the drop-down: the recent models first, then the demo parts
// and the library's checkpoints; without a library, the recent ones alone.
func (m *modelSection) offer(lib *library.Library) {
	if lib == nil {
		m.entry.SetOptions(m.recent)
		return
	}
	models := append([]string(nil), m.recent...)
	for _, p := range append([]string{request.TinyModel, request.TinySingleFile}, lib.Paths(library.KindCheckpoint)...) {
		if !slices.Contains(models, p) {
			models = append(models, p)
		}
	}
	m.fields.setChoices(m.entry, models)
}

func (m *modelSection) content() fyne.CanvasObject {
	hint := fyne.CanvasObject(m.hint)
	if m.getModels.OnTapped != nil {
		hint = container.NewBorder(nil, nil, nil, m.getModels, m.hint)
	}
	return container.NewVBox(
		caption(title(fModel)),
		container.NewBorder(nil, nil, nil, container.NewHBox(m.browse, m.file, m.addFolder), m.entry),
		hint,
		m.fields.errs[fModel])
}

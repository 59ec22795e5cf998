package ui

import (
	"context"
	"fmt"
	"os"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/layout"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core/download"
	"atelier/core/library"
)

// DownloadFunc fetches what (base, refiner, vae) into dest with the worker's
// downloader, reporting its events; core/download.Run in the app.
type DownloadFunc func(ctx context.Context, what, dest string, onEvent func(download.Event)) (string, error)

// getModelsDismissedKey is the preference that keeps the first-run panel
// closed once the user closed it; "Get models…" still opens it.
const getModelsDismissedKey = "getModelsDismissed"

const demoModelText = "Atelier is running on its tiny demo model: a model of the real SDXL architecture " +
	"with random weights, generated on the first run. It makes noise, not pictures; it is there so that " +
	"every part of the app can be tried at once. For real images, download SDXL from the Hugging Face hub " +
	"below, or add a folder of models you already have (diffusers folders or single-file .safetensors)."

// getModels is the "From the demo model to a real one" panel: it offers
// SDXL base, its refiner and a VAE from the hub, with progress and Cancel,
// and adding a folder the user already has.
type getModels struct {
	s      *Studio
	pop    *widget.PopUp
	checks []*widget.Check
	into   *widget.Label
	prog   *taskProgress
	start  *widget.Button
	cancel *widget.Button
	add    *widget.Button
	close  *widget.Button
	stop   context.CancelFunc // non-nil while a download runs
	folder string             // where the downloads go
	// done is set on the UI goroutine once a download run has ended.
	done bool
}

// setupGetModels wires the Model section's "Get models…" button; without a
// downloader (tests of other parts, the headless build) there is none.
func (s *Studio) setupGetModels() {
	if s.x == nil || s.x.svc.Download == nil {
		return
	}
	s.form.model.getModels.OnTapped = s.ShowGetModels
}

// libraryScanned opens the panel on the first run: while the library has no
// checkpoint of its own (only the demo model) and the user has not closed it.
func (s *Studio) libraryScanned(lib *library.Library) {
	if s.x == nil || s.x.svc.Download == nil || s.getModels != nil {
		return
	}
	if len(lib.Of(library.KindCheckpoint)) > 0 || s.app.Preferences().Bool(getModelsDismissedKey) {
		return
	}
	s.ShowGetModels()
}

// ShowGetModels opens the panel (again).
func (s *Studio) ShowGetModels() {
	if s.getModels == nil {
		s.getModels = newGetModels(s)
	}
	g := s.getModels
	if g.pop != nil && g.pop.Visible() {
		return
	}
	g.pop = newModal(g.content(), s.win.Canvas())
	g.pop.Show()
	g.findFolder()
}

func newGetModels(s *Studio) *getModels {
	g := &getModels{s: s}
	for i, p := range download.Presets {
		c := widget.NewCheck(fmt.Sprintf("%s (%s)", p.Title, p.Size), nil)
		c.SetChecked(i == 0)
		g.checks = append(g.checks, c)
	}
	g.into = widget.NewLabel("")
	// At words: a break anywhere split words of the hint ("is c / hecked").
	g.into.Wrapping = fyne.TextWrapWord
	g.into.SizeName = theme.SizeNameCaptionText
	g.prog = newTaskProgress(true)
	g.start = widget.NewButtonWithIcon("Download", theme.DownloadIcon(), g.Start)
	g.start.Importance = widget.HighImportance
	g.cancel = widget.NewButtonWithIcon("Cancel", theme.CancelIcon(), g.Cancel)
	g.cancel.Disable()
	g.add = widget.NewButtonWithIcon("Add a folder I already have…", theme.FolderOpenIcon(), g.addFolder)
	g.close = widget.NewButton("Close", g.Close)
	return g
}

func (g *getModels) content() fyne.CanvasObject {
	intro := widget.NewLabel(demoModelText)
	intro.Wrapping = fyne.TextWrapWord
	checks := container.NewVBox()
	for _, c := range g.checks {
		checks.Add(c)
	}
	body := container.NewVBox(heading("Get a real model"), intro, checks, g.into, g.prog.box,
		container.NewHBox(g.add, layout.NewSpacer(), g.close, g.cancel, g.start))
	return container.NewPadded(container.New(fixedWidth(560), body))
}

// fixedWidth lays its objects out at a fixed width and the height they need
// there: the panel's wrapped texts only know their height once laid out at
// that width, and a height fixed before the hint had its folder left the
// buttons below the panel.
type fixedWidth float32

func (w fixedWidth) MinSize(objects []fyne.CanvasObject) fyne.Size {
	var h float32
	for _, o := range objects {
		h = max(h, o.MinSize().Height)
	}
	return fyne.NewSize(float32(w), h)
}

func (w fixedWidth) Layout(objects []fyne.CanvasObject, size fyne.Size) {
	for _, o := range objects {
		o.Move(fyne.NewPos(0, 0))
		o.Resize(size)
	}
}

// findFolder says where the downloads go: Atelier's own models folder, the
// one the library always scans first (Settings lists it so).
func (g *getModels) findFolder() { g.showFolder(g.s.x.svc.Paths.Models) }

// showFolder says where the downloads go and what happens there.
func (g *getModels) showFolder(folder string) {
	g.folder = folder
	g.into.SetText("Into " + displayFolder(folder) + ", Atelier's models folder: the library always scans it, and Settings lists it first. The free space is checked first; Cancel keeps what was downloaded, and Download resumes it.")
	if g.pop != nil {
		g.pop.Refresh() // the hint's lines change the panel's height
	}
}

// Start downloads the checked models, one after the other.
func (g *getModels) Start() {
	if g.stop != nil || g.folder == "" {
		return
	}
	var what []download.Preset
	for i, c := range g.checks {
		if c.Checked {
			what = append(what, download.Presets[i])
		}
	}
	if len(what) == 0 {
		g.fail("Tick at least one model to download.")
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	g.stop, g.done = stop, false
	g.prog.begin("Asking the hub for the files…")
	g.start.Disable()
	g.cancel.Enable()
	folder, dl := g.folder, g.s.x.svc.Download
	go func() {
		var got []string
		var err error
		if err = os.MkdirAll(folder, 0o755); err != nil {
			err = fmt.Errorf("cannot create %s: %w; make it writable, or start Atelier with ATELIER_HOME naming a writable folder", folder, err)
		}
		for _, p := range what {
			if err != nil {
				break
			}
			dest, _ := download.Dest(folder, p.Name)
			var path string
			path, err = dl(ctx, p.Name, dest, func(ev download.Event) { g.s.do(func() { g.show(p, ev) }) })
			if err == nil {
				got = append(got, path)
			}
		}
		g.s.do(func() { g.finished(what, got, err) })
	}()
}

func (g *getModels) show(p download.Preset, ev download.Event) {
	switch ev.Event {
	case "plan":
		g.prog.step(-1, fmt.Sprintf("%s: %d files, %.2f GB", p.Title, len(ev.Files), float64(ev.Total)/1e9))
	case "progress":
		frac := -1.0
		if ev.Total > 0 {
			frac = float64(ev.Done) / float64(ev.Total)
		}
		g.prog.step(frac, fmt.Sprintf("%s: %.2f of %.2f GB · %s", p.Title, float64(ev.Done)/1e9, float64(ev.Total)/1e9, ev.File))
	}
}

func (g *getModels) finished(what []download.Preset, got []string, err error) {
	g.stop = nil
	g.start.Enable()
	g.cancel.Disable()
	if len(got) > 0 {
		g.s.form.rescan() // the drop-downs offer them
		if what[0].Name == "base" {
			g.s.form.model.entry.SetText(got[0])
		}
	}
	switch {
	case download.IsCancelled(err):
		g.prog.step(-1, "Cancelled. What was downloaded is kept: Download resumes it.")
	case err != nil:
		g.fail(err.Error())
	default:
		names := make([]string, len(what))
		for i, p := range what {
			names[i] = p.Title
		}
		g.prog.succeed("Done: " + strings.Join(names, ", ") + " in the library.")
	}
	g.done = true
}

// fail says what went wrong; the downloader's message says what to do.
func (g *getModels) fail(msg string) { g.prog.fail(sentence(msg), "", "", true) }

// Cancel stops the running download; its partial file stays for a resume.
func (g *getModels) Cancel() {
	if g.stop != nil {
		g.prog.step(-1, "Stopping…")
		g.stop()
	}
}

// Close hides the panel; on the first run it also keeps it from opening by
// itself again. A running download goes on.
func (g *getModels) Close() {
	g.s.app.Preferences().SetBool(getModelsDismissedKey, true)
	if g.pop != nil {
		g.pop.Hide()
	}
}

func (g *getModels) addFolder() {
	choose := g.s.x.svc.ChooseFolder
	go func() {
		dir, err := choose("Add a folder of models to the library")
		if err != nil || dir == "" {
			return
		}
		g.s.do(func() {
			g.s.form.addLibraryFolder(dir)
			g.prog.step(-1, "Added "+dir+" to the library: its models are in the drop-downs.")
		})
	}()
}

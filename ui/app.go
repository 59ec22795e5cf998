package ui

import (
	"context"

	"atelier/core/media"
	"atelier/core/paths"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/app"
)

// Store is the history behind the queue and gallery tabs: what the views
// ask of it together. Each view keeps only its own part (queueStore,
// galleryStore …). store.Store implements it.
type Store interface {
	History
	queueStore
	queueSubmitter
	pendingJobEditor
	galleryStore
	stateStore
}

// QueueRunner runs the queue in the background. jobs.QueueRunner implements it.
type QueueRunner interface {
	Wake()
	Cancel(ctx context.Context, id int64) (string, error)
}

// Services are the parts behind the queue and gallery tabs. Without them
// (nil) the studio is the single generate view.
type Services struct {
	Store  Store
	Queue  QueueRunner // nil: jobs wait for another process (atelier queue run)
	Thumbs *media.Thumbnailer
	Paths  paths.Paths
	// ExportImages copies images with their metadata: store.ExportImages over
	// the store, in the app.
	ExportImages func(ctx context.Context, ids []int64, dir string) ([]string, error)
	// ChooseFolder asks for a folder with the native dialog; tests replace it.
	ChooseFolder func(title string) (string, error)
	// Download fetches models from the hub for the "Get models…" panel; nil:
	// no panel.
	Download DownloadFunc
	// Settings are what the Settings window applies its changes to; nil: no
	// Settings window.
	Settings *SettingsServices
}

// MainWith runs the studio with the queue and gallery tabs, until its window
// closes. The queue runner's events must reach OnQueueEvent of the returned
// studio: start runs it once the studio exists.
func MainWith(gen Runner, hist History, svc *Services, start func(s *Studio)) {
	a, w := newAppWindow()
	s := newStudioWith(a, w, eventsOf(gen), hist, fyne.Do, svc)
	if start != nil {
		start(s)
	}
	w.ShowAndRun()
}

// MainAfterSetup is MainWith behind the set-up screen: the window shows it
// until the worker's Python environment is built (it stays open on errors),
// then the studio in its place.
func MainAfterSetup(opt SetupOptions, gen Runner, hist History, svc *Services, start func(s *Studio)) {
	a, w := newAppWindow()
	showSetup(w, opt, fyne.Do, func() {
		s := newStudioWith(a, w, eventsOf(gen), hist, fyne.Do, svc)
		if start != nil {
			start(s)
		}
	})
	w.ShowAndRun()
}

// showSetup puts the set-up screen in w; openStudio replaces it once set-up
// is done (on the UI goroutine).
func showSetup(w fyne.Window, opt SetupOptions, post func(func()), openStudio func()) *setupScreen {
	sc := newSetupScreen(opt, post, openStudio)
	w.SetContent(sc.content)
	return sc
}

func newAppWindow() (fyne.App, fyne.Window) {
	a := app.NewWithID("io.atelier.studio")
	a.Settings().SetTheme(newStudioTheme())
	w := a.NewWindow("Atelier")
	w.Resize(fyne.NewSize(1320, 860))
	return a, w
}

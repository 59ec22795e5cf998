package ui

import (
	"image/color"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/canvas"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"
)

// Studio is the main window's content and state.
type Studio struct {
	app  fyne.App
	win  fyne.Window
	gen  generator
	hist History

	// post runs a function on the UI goroutine: fyne.Do in the app. Tests
	// queue instead and run the queue on the test goroutine, because the test
	// driver's fyne.Do runs at once on the caller's goroutine, and Fyne's text
	// layout is not safe for concurrent use.
	post func(func())

	form        *form
	formScroll  *container.Scroll
	formRouter  *wheelRouter // takes the wheel over the form, fields included
	generate    *widget.Button
	cancel      *widget.Button
	bar         *widget.ProgressBar
	barBusy     *widget.ProgressBarInfinite
	barLabel    *widget.Label
	status      *statusLine
	view        *viewer
	strip       *recentStrip
	thumbs      *thumbCache
	historySeq  int     // orders history refreshes, so a slow old one cannot win
	historyDone int     // the newest refresh that has been shown
	job         *jobRun // non-nil while a job runs; UI goroutine only
	waitingFor  int64   // the queue job that the Generate job waits for, or 0
	selectAfter string  // path to select once the history shows it
	// followNewest: a queue job has made an image, and the viewer shows the
	// newest image once the history has it (not a stale preview or an older pick).
	followNewest bool
	x            *extras         // the queue and gallery tabs; nil without Services
	cpu          *cpuNote        // "this size takes minutes a step on the CPU"
	actions      *fyne.Container // under the form: Generate, progress, status
	warm         *warmUp         // the worker start begun when the app opened, or nil
	getModels    *getModels      // the "Get a real model" panel, once opened
	settingsWin  *settingsWindow // the Settings window, once opened
}

func newStudioWith(a fyne.App, w fyne.Window, gen generator, hist History, post func(func()), svc *Services) *Studio {
	s := &Studio{app: a, win: w, gen: gen, hist: hist, post: post, thumbs: newThumbCache()}
	s.form = newForm(s.Generate, s.do)
	s.form.load(a.Preferences())
	s.form.onNote = func(m string) { s.status.set(statusInfo, m, "") } // runs later, on the UI goroutine
	s.form.onLibrary = s.libraryScanned
	if svc != nil {
		s.form.ownModels = svc.Paths.Models
	}
	s.form.attach(gen, hist)

	s.generate = widget.NewButtonWithIcon("Generate", theme.MediaPlayIcon(), s.Generate)
	s.generate.Importance = widget.HighImportance
	s.cancel = widget.NewButtonWithIcon("Cancel", theme.CancelIcon(), s.Cancel)
	s.cancel.Disable()
	s.bar = widget.NewProgressBar()
	s.bar.Hide()
	s.barBusy = widget.NewProgressBarInfinite()
	s.barBusy.Hide()
	s.barBusy.Stop()
	s.barLabel = widget.NewLabel("Ready · Ctrl+Enter generates")
	s.barLabel.Truncation = fyne.TextTruncateEllipsis
	s.status = newStatusLine(w)
	s.cpu = newCPUNote()
	s.view = newViewer(s)
	s.strip = newRecentStrip(s.thumbs, s.showRecord)

	s.form.fields.onMarksGone = s.marksGone
	w.Canvas().SetOnTypedKey(s.TypedKey)
	for _, sc := range submitShortcuts {
		w.Canvas().AddShortcut(sc, func(fyne.Shortcut) { s.Generate() })
	}
	if svc != nil {
		s.setupExtras(svc)
		s.setupGetModels()
		s.setupSettings()
	}
	w.SetContent(withTips(w.Canvas(), s.layout()))
	s.restoreState()
	s.startFormSaver()
	// Closing the window mid-job cancels the job, so the worker is free at exit.
	w.SetOnClosed(func() {
		s.saveState()
		s.Cancel()
	})
	s.refreshHistory()
	return s
}

func (s *Studio) layout() fyne.CanvasObject {
	actions := container.NewVBox(
		widget.NewSeparator(),
		container.NewBorder(nil, nil, nil, s.cancel, s.generate),
		s.cpu.area,
	)
	s.actions = actions
	if qa := s.queueActions(); qa != nil {
		actions.Add(qa)
	}
	actions.Objects = append(actions.Objects,
		s.progressSlot(),
		s.barLabel,
		s.status.content(),
	)
	s.formScroll = container.NewVScroll(container.NewPadded(s.form.content()))
	s.form.onLayout = s.formScroll.Refresh
	s.formRouter = newWheelRouter(s.formScroll, s.form.prompts.prompt, s.form.prompts.negative)
	left := container.NewBorder(s.editBar(), container.NewPadded(actions), nil, nil,
		s.formRouter.overForm())

	stripTitle := heading("Recent")
	bottom := container.NewVBox(widget.NewSeparator(),
		container.NewBorder(nil, nil, container.NewPadded(stripTitle), nil, s.strip.content()))
	right := container.NewBorder(nil, bottom, nil, nil, s.view.content())

	split := container.NewHSplit(left, right)
	// About 480 px of 1320 for the form: at 0.28 (370 px) the fields and hints
	// were cramped. The user drags the split, and the studio remembers it.
	split.Offset = 0.36
	if s.x != nil {
		s.x.split = split
		return s.withTabs(split)
	}
	return split
}

// progressSlot holds the progress bars in a space that stays when both are
// hidden, so the buttons above do not jump when a run starts or ends.
func (s *Studio) progressSlot() fyne.CanvasObject {
	space := canvas.NewRectangle(color.Transparent)
	space.SetMinSize(s.bar.MinSize().Max(s.barBusy.MinSize()))
	return container.NewStack(space, s.bar, s.barBusy)
}

// Escape closes the topmost dialog, or else the gallery's detail view, or
// else cancels the running job.
func (s *Studio) Escape() {
	switch {
	case closeTopModal(s.win.Canvas()):
	case s.tab() == tabGallery && s.x.gallery.detail.box.Visible():
		s.x.gallery.closeDetail()
	default:
		s.Cancel()
	}
}

// do runs f on the UI goroutine; goroutines of ours reach widgets only through it.
func (s *Studio) do(f func()) { s.post(f) }

// extras is the studio's state for the queue and gallery tabs.
type extras struct {
	svc      *Services
	tabs     *container.AppTabs
	split    *container.Split
	queue    *queueView
	gallery  *galleryView
	addQueue *widget.Button
	edit     *queueEdit // the form's "editing a queued job" mode
	session  int64      // this sitting's session, made at the first "Add to queue"
	// formSaver writes the form to the store on each edit.
	formSaver *formSaver
}

// Tab indexes of the studio window.
const (
	tabStudio = iota
	tabQueue
	tabGallery
)

// setupExtras builds the tabs around the generate view.
func (s *Studio) setupExtras(svc *Services) {
	x := &extras{svc: svc}
	s.x = x
	x.addQueue = widget.NewButtonWithIcon("Add to queue", theme.ContentAddIcon(), s.AddToQueue)
	x.queue = newQueueView(s)
	x.edit = newQueueEdit(s)
	x.gallery = newGalleryView(s)
	if svc.ChooseFolder == nil {
		svc.ChooseFolder = chooseFolderNative
	}
	s.win.SetOnDropped(func(_ fyne.Position, uris []fyne.URI) { s.Dropped(uris) })
}

// queueActions is the "Add to queue" row under Generate; the form's batch
// count says how many jobs it queues.
func (s *Studio) queueActions() fyne.CanvasObject {
	if s.x == nil {
		return nil
	}
	return s.x.addQueue
}

// withTabs puts the generate view into the tab set.
func (s *Studio) withTabs(studio fyne.CanvasObject) fyne.CanvasObject {
	x := s.x
	x.tabs = container.NewAppTabs(
		container.NewTabItemWithIcon("Studio", theme.MediaPhotoIcon(), studio),
		container.NewTabItemWithIcon("Queue", theme.ListIcon(), x.queue.content()),
		container.NewTabItemWithIcon("Gallery", theme.GridIcon(), x.gallery.content()),
	)
	x.tabs.OnSelected = func(t *container.TabItem) {
		switch t.Text {
		case "Queue":
			x.queue.refresh()
		case "Gallery":
			x.gallery.open()
		}
	}
	return x.tabs
}

// editBar is the bar above the form, or nil without the queue.
func (s *Studio) editBar() fyne.CanvasObject {
	if s.x == nil {
		return nil
	}
	return s.x.edit.bar
}

package ui

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // dropped JPEGs: their size
	_ "image/png"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/app"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core"
)

// Store is what the queue, the gallery and the remembered settings need of
// the history. core.Store implements it.
type Store interface {
	History
	Enqueue(ctx context.Context, sessionID int64, reqs []core.Request) ([]int64, error)
	QueueJobs(ctx context.Context) ([]core.QueueJob, error)
	MoveJob(ctx context.Context, id int64, m core.Move) error
	UpdatePendingJob(ctx context.Context, id int64, req core.Request) error
	CancelJob(ctx context.Context, id int64) (string, error)
	RetryJob(ctx context.Context, id int64) (int64, error)
	ClearQueue(ctx context.Context, pendingToo bool) (int, error)
	QueueCounts(ctx context.Context) (map[string]int, error)
	QueuePaused(ctx context.Context) (bool, error)
	SetQueuePaused(ctx context.Context, paused bool) error
	MeasuredRate(ctx context.Context, n int) (core.Rate, error)
	NewSession(ctx context.Context, name, source string) (int64, error)
	Sessions(ctx context.Context) ([]core.Session, error)

	SearchImages(ctx context.Context, q core.GalleryQuery, offset, limit int) ([]core.ImageRecord, error)
	CountImages(ctx context.Context, q core.GalleryQuery) (int, error)
	GalleryModels(ctx context.Context) ([]string, error)
	GetImage(ctx context.Context, id int64) (*core.ImageDetail, error)
	SetStarred(ctx context.Context, id int64, starred bool) error
	DeleteImage(ctx context.Context, id int64) (*core.ImageRecord, error)

	GetSetting(ctx context.Context, key string) (string, bool, error)
	SetSetting(ctx context.Context, key, value string) error
	LastRequest(ctx context.Context) (core.Request, bool, error)
	SetLastRequest(ctx context.Context, r core.Request) error
}

// QueueRunner runs the queue in the background. core.QueueRunner implements it.
type QueueRunner interface {
	Wake()
	Cancel(ctx context.Context, id int64) (string, error)
}

// Services are the parts behind the queue and gallery tabs. Without them
// (nil) the studio is the single generate view.
type Services struct {
	Store  Store
	Queue  QueueRunner // nil: jobs wait for another process (atelier queue run)
	Thumbs *core.Thumbnailer
	Paths  core.Paths
	// ExportImages copies images with their metadata: core.ExportImages over
	// the store, in the app.
	ExportImages func(ctx context.Context, ids []int64, dir string) ([]string, error)
	// ChooseFolder asks for a folder with the native dialog; tests replace it.
	ChooseFolder func(title string) (string, error)
}

// MainWith runs the studio with the queue and gallery tabs, until its window
// closes. The queue runner's events must reach OnQueueEvent of the returned
// studio: start runs it once the studio exists.
func MainWith(gen Runner, hist History, svc *Services, start func(s *Studio)) {
	a := app.NewWithID("io.atelier.studio")
	a.Settings().SetTheme(newStudioTheme())
	w := a.NewWindow("Atelier")
	w.Resize(fyne.NewSize(1320, 860))
	s := newStudioWith(a, w, eventsOf(gen), hist, fyne.Do, svc)
	if start != nil {
		start(s)
	}
	w.ShowAndRun()
}

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

// AddToQueue validates the form and queues it as many times as its batch
// count says; the queue runs the jobs in the background.
func (s *Studio) AddToQueue() {
	if s.x == nil {
		return
	}
	req, verr := s.form.request()
	if rest := s.form.showErrors(verr); verr != nil {
		msg := "Fix the marked fields, then add to the queue again."
		if len(rest) > 0 {
			msg = verr.Error()
		}
		s.status.set(statusError, msg, "")
		return
	}
	s.form.save(s.app.Preferences(), req)
	s.saveLastRequest(req)
	count, _ := s.form.feat.count() // request() has checked it
	req.PreviewEvery = 0
	reqs, err := core.ExpandBatchCount(req, count)
	if err == nil {
		for i := range reqs {
			if reqs[i], err = core.PrepareForQueue(reqs[i]); err != nil {
				break
			}
		}
	}
	if err != nil {
		s.showRefusal(err)
		return
	}
	st := s.x.svc.Store
	ctx := context.Background()
	if s.x.session == 0 {
		if s.x.session, err = st.NewSession(ctx, "", core.SessionUI); err != nil {
			s.status.set(statusError, "Could not start a session: "+err.Error(), "")
			return
		}
	}
	ids, err := st.Enqueue(ctx, s.x.session, reqs)
	if err != nil {
		s.status.set(statusError, "Could not queue the job: "+err.Error(), "")
		return
	}
	msg := fmt.Sprintf("Queued job %d.", ids[0])
	if len(ids) > 1 {
		msg = fmt.Sprintf("Queued %d jobs (%d–%d).", len(ids), ids[0], ids[len(ids)-1])
	}
	if paused, _ := st.QueuePaused(ctx); paused {
		msg += " The queue is paused: resume it in the Queue tab."
	}
	s.status.set(statusDone, msg, "")
	if q := s.x.svc.Queue; q != nil {
		q.Wake()
	}
	s.x.queue.refresh()
}

// OnQueueEvent shows what the queue runner reports; it may be called from any
// goroutine.
func (s *Studio) OnQueueEvent(qe core.QueueEvent) {
	e := queueEventOf(qe)
	s.do(func() {
		if s.x == nil {
			return
		}
		s.x.queue.event(e)
		if e.kind == core.QueueStarted {
			s.showQueueWait()
		}
		if e.kind == core.QueueFinished && e.job != nil && e.job.Status == core.StatusDone {
			s.refreshHistory()
		}
	})
}

// runningQueueJob is the queue job this process's worker runs now, or 0.
func (s *Studio) runningQueueJob() int64 {
	if s.x == nil {
		return 0
	}
	var id int64
	for k := range s.x.queue.live {
		if id == 0 || k < id {
			id = k
		}
	}
	return id
}

// showQueueWait says so when the Generate job waits for a queue job: one
// worker runs one job at a time, and the wait would otherwise look like a hang.
func (s *Studio) showQueueWait() {
	j := s.job
	if j == nil || j.hasBegun() {
		return
	}
	j.mu.Lock()
	cancelled := j.cancelAsked
	j.mu.Unlock()
	id := s.runningQueueJob()
	if cancelled || id == 0 {
		return
	}
	s.waitingFor = id
	s.status.set(statusInfo, fmt.Sprintf("Waiting for the queued job #%d to finish (one worker)…", id), "")
}

// galleryChanged tells the gallery that the history has new images: it
// shows them at once if it is on screen, else when it is opened next.
func (s *Studio) galleryChanged() {
	if s.x == nil || s.x.gallery == nil || s.x.tabs == nil {
		return
	}
	g := s.x.gallery
	g.stale = true
	if s.x.tabs.SelectedIndex() == tabGallery && g.opened && !g.detail.box.Visible() {
		g.stale = false
		g.reload()
	}
}

// Dropped loads the settings of the first PNG dropped onto the window into the form.
func (s *Studio) Dropped(uris []fyne.URI) {
	for _, u := range uris {
		if u.Scheme() != "file" {
			continue
		}
		switch strings.ToLower(filepath.Ext(u.Path())) {
		case ".png":
			s.ImportPNG(u.Path())
			return
		case ".jpg", ".jpeg", ".webp":
			s.dropInit(u.Path())
			return
		}
	}
	if len(uris) > 0 {
		s.status.set(statusWarn, "Drop a PNG made by Atelier or AUTOMATIC1111 to load its settings, or any PNG, JPEG or WebP image to start from it (img2img).", "")
	}
}

// dropInit makes a dropped picture that carries no settings the init image,
// at its own size where it can be read.
func (s *Studio) dropInit(path string) {
	w, h := 0, 0
	if f, err := os.Open(path); err == nil {
		if cfg, _, err := image.DecodeConfig(f); err == nil {
			w, h = cfg.Width, cfg.Height
		}
		f.Close()
	}
	s.useAsInit(path, w, h)
}

// ImportPNG reads a PNG's generation settings into the form.
func (s *Studio) ImportPNG(path string) {
	base, verr := s.form.request()
	if verr != nil {
		base = core.DefaultRequest()
	}
	models := ""
	if s.x != nil {
		models = s.x.svc.Paths.Models
	}
	got, err := core.ImportPNG(path, base, models)
	if errors.Is(err, core.ErrNoSettings) {
		s.dropInit(path) // a picture from elsewhere: start from it
		return
	}
	if err != nil {
		s.status.set(statusError, sentence(err.Error()), "")
		return
	}
	s.form.set(got.Request)
	if s.x != nil {
		s.x.tabs.SelectIndex(tabStudio)
	}
	msg := "Loaded the settings of " + filepath.Base(path) + "."
	if len(got.Notes) > 0 {
		s.status.set(statusWarn, msg+" Not used: "+strings.Join(got.Notes, "; ")+".", got.Text)
		return
	}
	s.status.set(statusDone, msg, "")
}

// useSettings fills the form with a request from the history and shows it.
func (s *Studio) useSettings(r core.Request) {
	r.OutputDir = ""
	if r.BatchSize == 0 {
		r.BatchSize = 1
	}
	s.form.set(r)
	if s.x != nil {
		s.x.tabs.SelectIndex(tabStudio)
	}
	s.status.set(statusInfo, fmt.Sprintf("Settings loaded (seed %d). Generate or add to the queue.", r.Seed), "")
}

// useAsInit makes a finished image the init image of the form (A1111's "send
// to img2img"): the size becomes the image's, and what does not go with an
// init image (the hires pass, an old mask) is cleared.
func (s *Studio) useAsInit(path string, width, height int) {
	f := s.form
	f.feat.initImage.SetText(path)
	f.feat.mask.SetText("")
	f.feat.hires.SetText("")
	if width > 0 && height > 0 {
		// Its size, down to multiples of 8; a picture past the largest size is
		// scaled down whole, keeping its shape.
		scale := min(1, float64(core.MaxSize)/float64(max(width, height)))
		fit := func(v int) int {
			return max(int(float64(v)*scale)/core.SizeMultiple*core.SizeMultiple, core.MinSize)
		}
		f.width.SetText(strconv.Itoa(fit(width)))
		f.height.SetText(strconv.Itoa(fit(height)))
	}
	f.clearErrors()
	f.feat.openSectionOf(fInitImage)
	if s.x != nil {
		s.x.tabs.SelectIndex(tabStudio)
	}
	s.status.set(statusInfo, fmt.Sprintf("%s is the init image. Describe the change, set the denoising strength, then Generate.",
		filepath.Base(path)), "")
}

// upscaleImage enlarges a finished image (A1111's Extras): with the upscaler
// and factor of the form's Upscale section when one is chosen, else Lanczos
// 2x. The job is recorded like any other, with src's settings, so the new
// image sits in the history and reloads like its source.
func (s *Studio) upscaleImage(path string, src core.Request) {
	if s.job != nil {
		s.status.set(statusWarn, "A job is running: upscale when it has finished.", "")
		return
	}
	req := src
	if req.Model == "" {
		req.Model = core.TinyModel // recorded only: an upscale loads no model
	}
	if strings.TrimSpace(req.Prompt) == "" {
		req.Prompt = "upscaled " + filepath.Base(path)
	}
	req.OutputDir, req.BatchSize, req.PreviewEvery = "", 1, 0
	req.UpscaleOnly, req.InitImage = true, path
	req.MaskImage, req.MaskBlur, req.MaskPadding, req.HiresScale, req.HiresSteps, req.HiresStrength = "", nil, 0, 0, 0, 0
	req.Strength, req.LoRAs, req.ControlNets, req.Refiner, req.RefinerSwitch, req.VAE = 0, nil, nil, "", 0, ""
	req.Upscaler, req.Upscale = core.LanczosUpscaler, core.DefaultUpscale
	if u := strings.TrimSpace(s.form.feat.upscaler.Text); u != "" {
		req.Upscaler = u
		if f, err := strconv.ParseFloat(strings.TrimSpace(s.form.feat.upscale.Text), 64); err == nil {
			req.Upscale = f
		}
	}
	if s.x != nil {
		s.x.tabs.SelectIndex(tabStudio)
	}
	s.run(req, 1, fmt.Sprintf("Upscaling %s (%s, ×%g)…", filepath.Base(path), req.Upscaler, req.Upscale))
}

// showRefusal shows why a request was refused: beside the fields it names,
// and in the status line.
func (s *Studio) showRefusal(err error) {
	if v, ok := core.AsValidation(err); ok {
		s.form.showErrors(v)
	}
	var jerr *core.JobError
	if errors.As(err, &jerr) && jerr.Field != "" {
		s.form.showErrorText(jerr.Field, sentence(jerr.Message))
	}
	s.status.set(statusError, sentence(err.Error()), "")
}

func (s *Studio) saveLastRequest(r core.Request) {
	if s.x == nil {
		return
	}
	r.PreviewEvery = 0
	_ = s.x.svc.Store.SetLastRequest(context.Background(), r) // best effort: the preferences keep a copy too
}

// windowLayout is the window's size, split and tab, remembered between runs.
type windowLayout struct {
	Width  float32 `json:"width"`
	Height float32 `json:"height"`
	Split  float64 `json:"split"`
	Tab    int     `json:"tab"`
}

const settingWindowLayout = "ui.window_layout"

// restoreState applies the remembered window layout and form settings.
func (s *Studio) restoreState() {
	if s.x == nil {
		return
	}
	ctx := context.Background()
	st := s.x.svc.Store
	if r, ok, err := st.LastRequest(ctx); err == nil && ok && r.Model != "" {
		s.form.set(r)
	}
	v, ok, err := st.GetSetting(ctx, settingWindowLayout)
	if err != nil || !ok {
		return
	}
	var l windowLayout
	if json.Unmarshal([]byte(v), &l) != nil {
		return
	}
	if l.Width >= 400 && l.Height >= 300 {
		s.win.Resize(fyne.NewSize(l.Width, l.Height))
	}
	if l.Split > 0.05 && l.Split < 0.95 && s.x.split != nil {
		s.x.split.SetOffset(l.Split)
	}
	if l.Tab >= 0 && l.Tab < len(s.x.tabs.Items) {
		s.x.tabs.SelectIndex(l.Tab)
	}
}

// saveState remembers the window layout and the form (at close).
func (s *Studio) saveState() {
	if s.x == nil {
		return
	}
	size := s.win.Canvas().Size()
	l := windowLayout{Width: size.Width, Height: size.Height, Tab: s.x.tabs.SelectedIndex()}
	if s.x.split != nil {
		l.Split = s.x.split.Offset
	}
	if b, err := json.Marshal(l); err == nil {
		_ = s.x.svc.Store.SetSetting(context.Background(), settingWindowLayout, string(b)) // best effort at exit
	}
	if r, verr := s.form.request(); verr == nil {
		s.saveLastRequest(r)
	}
}

// refreshEvery reloads the queue view now and then, so that jobs added or
// run by other processes (the CLI) show up.
func (s *Studio) refreshEvery(d time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			s.do(func() {
				if s.x != nil && s.x.tabs.SelectedIndex() == tabQueue {
					s.x.queue.refresh()
				}
			})
		}
	}
}

// StartRefresh reloads the queue view every two seconds while it shows, so
// that jobs added or run by other processes (the CLI) appear, until stop.
func (s *Studio) StartRefresh(stop <-chan struct{}) { go s.refreshEvery(2*time.Second, stop) }

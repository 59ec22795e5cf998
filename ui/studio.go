package ui

import (
	"context"
	"errors"
	"fmt"
	"image"
	"net/url"
	"path/filepath"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/canvas"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/layout"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core"
)

// History lists the newest images. core.Store implements it.
type History interface {
	RecentImages(ctx context.Context, limit int) ([]core.ImageRecord, error)
}

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
	x           *extras // the queue and gallery tabs; nil without Services
}

func newStudioWith(a fyne.App, w fyne.Window, gen generator, hist History, post func(func()), svc *Services) *Studio {
	s := &Studio{app: a, win: w, gen: gen, hist: hist, post: post, thumbs: newThumbCache()}
	s.form = newForm(s.Generate, s.do)
	s.form.load(a.Preferences())
	s.form.feat.onNote = func(m string) { s.status.set(statusInfo, m, "") } // runs later, on the UI goroutine
	s.form.feat.attach(gen, hist)

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
	s.view = newViewer(s)
	s.strip = newRecentStrip(s.thumbs, s.showRecord)

	for _, sc := range submitShortcuts {
		w.Canvas().AddShortcut(sc, func(fyne.Shortcut) { s.Generate() })
	}
	if svc != nil {
		s.setupExtras(svc)
	}
	w.SetContent(s.layout())
	s.restoreState()
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
	)
	if qa := s.queueActions(); qa != nil {
		actions.Add(qa)
	}
	actions.Objects = append(actions.Objects,
		container.NewStack(s.bar, s.barBusy),
		s.barLabel,
		s.status.content(),
	)
	left := container.NewBorder(s.editBar(), container.NewPadded(actions), nil, nil,
		container.NewVScroll(container.NewPadded(s.form.content())))

	stripTitle := heading("Recent")
	bottom := container.NewVBox(widget.NewSeparator(),
		container.NewBorder(nil, nil, container.NewPadded(stripTitle), nil, s.strip.content()))
	right := container.NewBorder(nil, bottom, nil, nil, s.view.content())

	split := container.NewHSplit(left, right)
	split.Offset = 0.28
	if s.x != nil {
		s.x.split = split
		return s.withTabs(split)
	}
	return split
}

// do runs f on the UI goroutine; goroutines of ours reach widgets only through it.
func (s *Studio) do(f func()) { s.post(f) }

// Generate validates the form and, when it is valid, starts a job. Invalid
// fields are marked beside themselves and no job starts.
func (s *Studio) Generate() {
	if s.job != nil {
		return
	}
	req, verr := s.form.request()
	if rest := s.form.showErrors(verr); verr != nil {
		msg := "Fix the marked fields, then generate again."
		if len(rest) > 0 {
			msg = verr.Error()
		}
		s.status.set(statusError, msg, "")
		return
	}
	s.form.save(s.app.Preferences(), req)
	s.saveLastRequest(req)
	count, _ := s.form.feat.count() // validated with the request
	s.run(req, count, "Generating…")
}

// run starts count jobs of req (seeds following on), with the progress and
// the result shown as for Generate.
func (s *Studio) run(req core.Request, count int, label string) {
	ctx, cancel := context.WithCancel(context.Background())
	j := newJobRun(req, cancel)
	s.job = j
	s.setRunning(true)
	s.status.set(statusInfo, label, "")
	s.showQueueWait()
	s.showProgress(j)

	go j.frames.run(j.done, heartbeat, func() {
		s.do(func() {
			if s.job == j {
				s.showProgress(j)
			}
		})
	})
	go func() {
		out, err := runJobs(ctx, s.gen, req, count, j.onEvent)
		cancel()
		close(j.done)
		s.do(func() { s.finish(j, out, err) })
	}()
}

// Cancel asks the running job, if any, to stop; the job ends as cancelled.
func (s *Studio) Cancel() {
	if s.job == nil {
		return
	}
	s.job.mu.Lock()
	s.job.cancelAsked = true
	s.job.mu.Unlock()
	s.job.cancel()
	s.waitingFor = 0
	s.cancel.Disable()
	s.status.set(statusInfo, "Cancelling…", "")
}

// setRunning switches the buttons and the progress bar. The form stays
// editable during a job (the job took a copy), so the next prompt can be
// written while this one renders.
func (s *Studio) setRunning(on bool) {
	if on {
		s.generate.Disable()
		s.cancel.Enable()
		s.bar.SetValue(0)
		s.bar.Show()
	} else {
		s.generate.Enable()
		s.cancel.Disable()
		s.showBusy(false)
		s.bar.Hide() // an idle bar reads as a button; the label says how it ended
	}
}

func (s *Studio) showBusy(on bool) {
	if on == s.barBusy.Visible() {
		return
	}
	if on {
		s.bar.Hide()
		s.barBusy.Show()
		s.barBusy.Start()
	} else {
		s.barBusy.Stop()
		s.barBusy.Hide()
		if s.job != nil {
			s.bar.Show()
		}
	}
}

// showProgress moves the job's newest state onto the widgets.
func (s *Studio) showProgress(j *jobRun) {
	if s.waitingFor != 0 && j.hasBegun() {
		s.waitingFor = 0
		s.status.set(statusInfo, "Generating…", "")
	}
	p, preview := j.take()
	if f, ok := p.fraction(); ok {
		s.showBusy(false)
		s.bar.SetValue(f)
	} else {
		s.showBusy(true)
	}
	s.barLabel.SetText(progressText(p, time.Since(j.start)))
	if preview != nil {
		s.view.showPreview(preview, p)
	}
}

// finish shows how a job ended and refreshes the history.
func (s *Studio) finish(j *jobRun, out *core.JobOutcome, err error) {
	if s.job != j {
		return
	}
	s.job = nil
	s.waitingFor = 0
	s.setRunning(false)
	s.form.feat.afterJob(s.gen, out)
	p, _ := j.take()
	elapsed := formatElapsed(time.Since(j.start))
	j.mu.Lock()
	asked := j.cancelAsked
	j.mu.Unlock()

	var jerr *core.JobError
	switch {
	case out != nil && len(out.Images) > 0:
		s.bar.SetValue(1)
		img := out.Images[0]
		rec := core.ImageRecord{Path: img.Path, Seed: img.Seed, Width: img.Width, Height: img.Height,
			Prompt: j.req.Prompt, Model: j.req.Model}
		s.view.showRecord(rec, metricsText(out.Metrics))
		s.barLabel.SetText(fmt.Sprintf("done — %d/%d · %s", j.req.Steps, j.req.Steps, elapsed))
		msg := fmt.Sprintf("Saved to the history · seed %d", img.Seed)
		if len(out.Images) > 1 {
			msg = fmt.Sprintf("%d images done · seeds %d–%d", len(out.Images),
				img.Seed, out.Images[len(out.Images)-1].Seed)
		}
		if err != nil {
			// The image exists even though recording it failed: show both.
			msg = "The image was made but " + err.Error()
			s.status.set(statusError, sentence(msg), "")
		} else {
			s.status.set(statusDone, msg, "")
		}
		s.selectAfter = img.Path
	case err == nil:
		s.status.set(statusError, "The job finished without an image. Try again; if it keeps happening, run `atelier doctor`.", "")
	case isCancelled(err, asked):
		s.barLabel.SetText(cancelText(p, elapsed))
		s.status.set(statusWarn, "Cancelled. Change the settings or generate again.", detailOf(err))
	case errors.As(err, &jerr):
		msg := sentence(jerr.Message)
		if jerr.Field != "" {
			s.form.showErrorText(jerr.Field, msg)
		}
		s.barLabel.SetText("failed · " + elapsed)
		s.status.set(statusError, msg, jerr.Detail)
	default:
		if v, ok := core.AsValidation(err); ok {
			rest := s.form.showErrors(v)
			msg := "Fix the marked fields, then generate again."
			if len(rest) > 0 {
				msg = v.Error()
			}
			s.barLabel.SetText("not started")
			s.status.set(statusError, msg, "")
			break
		}
		s.barLabel.SetText("failed · " + elapsed)
		s.status.set(statusError, "The job could not run: "+err.Error()+
			". Try again; if it keeps failing, run `atelier doctor` to check the worker.", "")
	}
	s.refreshHistory()
}

// sentence capitalises a message for display on its own.
func sentence(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	if n == 0 {
		return s
	}
	return string(unicode.ToUpper(r)) + s[n:]
}

func isCancelled(err error, asked bool) bool {
	var jerr *core.JobError
	if errors.As(err, &jerr) {
		return jerr.Code == core.ErrCancelled
	}
	// A runner that only returns the context's error still means the user's cancel.
	return asked && errors.Is(err, context.Canceled)
}

func detailOf(err error) string {
	var jerr *core.JobError
	if errors.As(err, &jerr) {
		return jerr.Detail
	}
	return ""
}

func cancelText(p progressSnapshot, elapsed string) string {
	if p.Total > 0 {
		return fmt.Sprintf("cancelled at %d/%d · %s", p.Step, p.Total, elapsed)
	}
	return "cancelled · " + elapsed
}

func metricsText(m *core.Metrics) string {
	if m == nil {
		return ""
	}
	var parts []string
	if m.TotalS > 0 {
		parts = append(parts, fmt.Sprintf("%.1f s", m.TotalS))
	}
	if m.ItS > 0 {
		parts = append(parts, fmt.Sprintf("%.2f it/s", m.ItS))
	}
	if m.Device != "" {
		d := m.Device
		if m.Dtype != "" {
			d += " " + m.Dtype
		}
		parts = append(parts, d)
	}
	if m.BatchChunks > 1 {
		parts = append(parts, fmt.Sprintf("batch in %d chunks", m.BatchChunks))
	}
	if m.VAEFallback {
		parts = append(parts, "VAE fell back to float32")
	}
	return strings.Join(parts, " · ")
}

// refreshHistory reloads the strip in the background and then loads any
// thumbnails it lacks, one at a time, so the UI never waits on the disk.
func (s *Studio) refreshHistory() {
	if s.hist == nil {
		return
	}
	s.galleryChanged()
	s.historySeq++
	seq, hist := s.historySeq, s.hist
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		recs, err := hist.RecentImages(ctx, stripLimit)
		s.do(func() {
			if seq != s.historySeq {
				return
			}
			s.historyDone = seq
			if err != nil {
				s.status.set(statusError, "Could not read the history: "+err.Error(), "")
				return
			}
			if s.selectAfter != "" {
				s.strip.selected = s.selectAfter
				s.selectAfter = ""
			}
			missing := s.strip.set(recs)
			if s.view.shown == nil && len(recs) > 0 && s.job == nil {
				s.showRecord(recs[0]) // reopen on the newest image rather than a blank canvas
			}
			if len(missing) > 0 {
				go s.loadThumbs(missing)
			}
		})
	}()
}

// loadThumbs decodes thumbnails one at a time off the UI goroutine.
func (s *Studio) loadThumbs(paths []string) {
	for _, p := range paths {
		s.thumbs.load(p)
		s.do(func() { s.strip.thumbReady(p) })
	}
}

// showRecord shows an image from the history in the viewer.
func (s *Studio) showRecord(rec core.ImageRecord) {
	s.view.showRecord(rec, "")
	s.strip.selectPath(rec.Path)
}

// viewer is the large image with its caption and actions.
type viewer struct {
	s           *Studio
	img         *canvas.Image
	placeholder fyne.CanvasObject
	title       *widget.Label
	info        *widget.Label
	reuseSeed   *widget.Button
	reuseAll    *widget.Button
	toInit      *widget.Button
	upscale     *widget.Button
	open        *widget.Button
	shown       *core.ImageRecord
}

func newViewer(s *Studio) *viewer {
	v := &viewer{s: s, img: &canvas.Image{FillMode: canvas.ImageFillContain, ScaleMode: canvas.ImageScaleSmooth}}
	v.img.Hide()
	icon := widget.NewIcon(theme.MediaPhotoIcon())
	hint := widget.NewLabelWithStyle("Write a prompt and press Generate (Ctrl+Enter).",
		fyne.TextAlignCenter, fyne.TextStyle{})
	hint.Importance = widget.LowImportance
	v.placeholder = container.NewCenter(container.NewVBox(
		container.NewCenter(container.NewGridWrap(fyne.NewSquareSize(64), icon)), hint))
	v.title = widget.NewLabelWithStyle("", fyne.TextAlignLeading, fyne.TextStyle{Bold: true})
	v.title.Truncation = fyne.TextTruncateEllipsis
	v.info = widget.NewLabel("")
	v.info.Importance = widget.LowImportance
	v.info.Truncation = fyne.TextTruncateEllipsis
	v.reuseSeed = widget.NewButtonWithIcon("Reuse seed", theme.ContentCopyIcon(), v.useSeed)
	v.reuseAll = widget.NewButtonWithIcon("Use settings", theme.ContentRedoIcon(), v.useSettings)
	v.toInit = widget.NewButtonWithIcon("img2img", theme.MediaReplayIcon(), v.useAsInit)
	v.upscale = widget.NewButtonWithIcon("Upscale", theme.ZoomInIcon(), v.upscaleShown)
	v.open = widget.NewButtonWithIcon("Open", theme.FileImageIcon(), v.openFile)
	for _, b := range v.actions() {
		b.Importance = widget.LowImportance
		b.Disable()
	}
	return v
}

func (v *viewer) content() fyne.CanvasObject {
	bg := canvas.NewRectangle(canvasBg)
	bg.CornerRadius = 10
	stage := container.NewStack(bg, v.placeholder, container.NewPadded(v.img))
	caption := container.NewBorder(nil, nil, nil,
		container.NewHBox(v.reuseSeed, v.reuseAll, v.toInit, v.upscale, v.open),
		container.NewVBox(v.title, v.info))
	return container.NewPadded(container.NewBorder(nil, caption, nil, nil, stage))
}

// showPreview shows a live preview of the running job.
func (v *viewer) showPreview(img image.Image, p progressSnapshot) {
	v.img.File, v.img.Image = "", img
	v.img.Show()
	v.placeholder.Hide()
	v.img.Refresh()
	v.title.SetText("Preview")
	v.info.SetText(progressText(p, time.Since(v.s.job.start)))
	// The actions belong to a finished image, not to latents in progress.
	for _, b := range v.actions() {
		b.Disable()
	}
}

// showRecord shows a finished image; extra is appended to its caption.
func (v *viewer) showRecord(rec core.ImageRecord, extra string) {
	r := rec
	v.shown = &r
	v.img.Image, v.img.File = nil, rec.Path
	v.img.Show()
	v.placeholder.Hide()
	v.img.Refresh()
	title := strings.Join(strings.Fields(rec.Prompt), " ")
	if title == "" {
		title = filepath.Base(rec.Path)
	}
	v.title.SetText(title)
	parts := []string{fmt.Sprintf("seed %d", rec.Seed), fmt.Sprintf("%d × %d", rec.Width, rec.Height)}
	if rec.Model != "" {
		parts = append(parts, modelName(rec.Model))
	}
	if extra != "" {
		parts = append(parts, extra)
	}
	v.info.SetText(strings.Join(parts, " · "))
	for _, b := range v.actions() {
		b.Enable()
	}
}

func (v *viewer) actions() []*widget.Button {
	return []*widget.Button{v.reuseSeed, v.reuseAll, v.toInit, v.upscale, v.open}
}

// upscaleShown enlarges the shown image, with the settings the history has of it.
func (v *viewer) upscaleShown() {
	if v.shown == nil {
		return
	}
	src := core.DefaultRequest()
	src.Prompt, src.Model, src.Seed = v.shown.Prompt, v.shown.Model, v.shown.Seed
	if h, ok := v.s.hist.(interface {
		GetImage(context.Context, int64) (*core.ImageDetail, error)
	}); ok && v.shown.ID != 0 {
		if d, err := h.GetImage(context.Background(), v.shown.ID); err == nil {
			src = d.Request
		}
	}
	v.s.upscaleImage(v.shown.Path, src)
}

// useAsInit starts an img2img job from the shown image.
func (v *viewer) useAsInit() {
	if v.shown != nil {
		v.s.useAsInit(v.shown.Path, v.shown.Width, v.shown.Height)
	}
}

func modelName(m string) string {
	if m == core.TinyModel {
		return "tiny demo model"
	}
	return filepath.Base(filepath.Clean(m))
}

func (v *viewer) useSeed() {
	if v.shown != nil {
		v.s.form.seed.SetText(fmt.Sprint(v.shown.Seed))
	}
}

// useSettings loads what the history knows of the shown image back into the form.
func (v *viewer) useSettings() {
	if v.shown == nil {
		return
	}
	f, r := v.s.form, v.shown
	f.prompt.SetText(r.Prompt)
	if r.Model != "" {
		f.model.SetText(r.Model)
	}
	f.seed.SetText(fmt.Sprint(r.Seed))
	if r.Width > 0 && r.Height > 0 {
		f.width.SetText(fmt.Sprint(r.Width))
		f.height.SetText(fmt.Sprint(r.Height))
	}
}

func (v *viewer) openFile() {
	if v.shown == nil {
		return
	}
	if err := v.s.app.OpenURL(&url.URL{Scheme: "file", Path: v.shown.Path}); err != nil {
		v.s.status.set(statusError, "Could not open the image: "+err.Error(), "")
	}
}

type statusKind int

const (
	statusInfo statusKind = iota
	statusDone
	statusWarn
	statusError
)

// statusLine says what happened and what to do, with the technical detail
// (worker stderr, traceback) one click away rather than in the user's face.
type statusLine struct {
	win     fyne.Window
	kind    statusKind
	icon    *widget.Icon
	text    *widget.Label
	details *widget.Button
	detail  string
	box     *fyne.Container
}

func newStatusLine(win fyne.Window) *statusLine {
	st := &statusLine{win: win, icon: widget.NewIcon(nil), text: widget.NewLabel("")}
	st.text.Wrapping = fyne.TextWrapWord
	st.details = widget.NewButton("Details", st.showDetail)
	st.details.Importance = widget.LowImportance
	st.details.Hide()
	st.box = container.NewBorder(nil, nil, container.NewVBox(st.icon), nil,
		container.NewVBox(st.text, container.NewHBox(st.details, layout.NewSpacer())))
	st.box.Hide()
	return st
}

func (st *statusLine) content() fyne.CanvasObject { return st.box }

func (st *statusLine) set(kind statusKind, text, detail string) {
	st.kind, st.detail = kind, detail
	switch kind {
	case statusDone:
		st.icon.SetResource(theme.NewSuccessThemedResource(theme.ConfirmIcon()))
		st.text.Importance = widget.SuccessImportance
	case statusWarn:
		st.icon.SetResource(theme.NewWarningThemedResource(theme.WarningIcon()))
		st.text.Importance = widget.WarningImportance
	case statusError:
		st.icon.SetResource(theme.NewErrorThemedResource(theme.ErrorIcon()))
		st.text.Importance = widget.DangerImportance
	default:
		st.icon.SetResource(theme.InfoIcon())
		st.text.Importance = widget.MediumImportance
	}
	st.text.SetText(text)
	if detail != "" {
		st.details.Show()
	} else {
		st.details.Hide()
	}
	st.box.Show()
}

// showDetail shows the detail in a modal pop-up (selectable, for bug reports).
func (st *statusLine) showDetail() {
	body := widget.NewLabel(st.detail)
	body.TextStyle = fyne.TextStyle{Monospace: true}
	body.Selectable = true
	scroll := container.NewScroll(body)
	scroll.SetMinSize(fyne.NewSize(640, 320))
	var pop *widget.PopUp
	closeBtn := widget.NewButton("Close", func() { pop.Hide() })
	pop = widget.NewModalPopUp(container.NewBorder(heading("Details"),
		container.NewHBox(layout.NewSpacer(), closeBtn), nil, nil, scroll), st.win.Canvas())
	pop.Show()
}

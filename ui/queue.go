package ui

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/layout"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core/failure"
	"atelier/core/jobs"
	"atelier/core/store"
)

// queueView is the Queue tab: every queue job with its status, progress and
// ETA, and the actions that apply to it. UI goroutine only.
type queueView struct {
	s      *Studio
	jobs   []store.QueueJob
	live   map[int64]jobs.Live // progress of the jobs running in this process
	rate   store.Rate
	eta    jobs.QueueETA
	paused bool
	counts map[string]int // every queue job by status (the list shows the newest finished only)

	list     *widget.List
	pause    *widget.Button
	clear    *widget.Button
	clearAll *widget.Button
	sessions *widget.Button
	summary  *widget.Label
	empty    *widget.Label
	// heldNote says that another Atelier process holds the device and runs
	// the jobs; heldBy is that process (nil when this one may run them).
	heldNote *widget.Label
	heldBy   *store.Lease
	rows     map[int64]*queueRow // the row showing each job now
	// the open sessions pop-up and its grid of labels, if any
	sessionsPop  *widget.PopUp
	sessionsGrid *fyne.Container
	err          error // the last refresh's error
}

func newQueueView(s *Studio) *queueView {
	v := &queueView{s: s, live: map[int64]jobs.Live{}, rows: map[int64]*queueRow{}}
	v.pause = widget.NewButtonWithIcon("Pause", theme.MediaPauseIcon(), v.togglePause)
	v.clear = widget.NewButtonWithIcon("Clear finished", theme.ContentClearIcon(), func() { v.clearQueue(false) })
	v.clearAll = widget.NewButtonWithIcon("Cancel all waiting", theme.CancelIcon(), func() {
		confirm(s.win, "Cancel every waiting job?", "Jobs that have not started are cancelled; the running one goes on.",
			func() { v.clearQueue(true) })
	})
	v.sessions = widget.NewButtonWithIcon("Sessions", theme.InfoIcon(), v.showSessions)
	v.summary = widget.NewLabel("")
	v.summary.Truncation = fyne.TextTruncateEllipsis
	v.empty = widget.NewLabel("The queue is empty. Fill the form and press \"Add to queue\".")
	v.empty.Importance = widget.LowImportance
	v.heldNote = widget.NewLabel("")
	v.heldNote.Wrapping = fyne.TextWrapWord
	v.heldNote.Importance = widget.WarningImportance
	v.heldNote.Hide()
	v.list = widget.NewList(
		func() int { return len(v.jobs) },
		func() fyne.CanvasObject { return newQueueRow(v) },
		func(i widget.ListItemID, o fyne.CanvasObject) {
			if i < len(v.jobs) {
				o.(*queueRow).show(&v.jobs[i])
			}
		})
	v.list.HideSeparators = false
	return v
}

func (v *queueView) content() fyne.CanvasObject {
	head := container.NewBorder(nil, nil, heading("Queue"),
		container.NewHBox(v.pause, v.clear, v.clearAll, v.sessions), v.summary)
	return container.NewBorder(container.NewVBox(container.NewPadded(head), v.heldNote, widget.NewSeparator()), nil, nil, nil,
		container.NewStack(container.NewCenter(v.empty), v.list))
}

// queueStore is what the Queue tab reads and changes of the queue.
type queueStore interface {
	QueueJobs(ctx context.Context) ([]store.QueueJob, error)
	QueueCounts(ctx context.Context) (map[string]int, error)
	QueuePaused(ctx context.Context) (bool, error)
	SetQueuePaused(ctx context.Context, paused bool) error
	MeasuredRate(ctx context.Context, n int) (store.Rate, error)
	MoveJob(ctx context.Context, id int64, m store.Move) error
	CancelJob(ctx context.Context, id int64) (string, error)
	RetryJob(ctx context.Context, id int64) (int64, error)
	ClearQueue(ctx context.Context, pendingToo bool) (int, error)
	Sessions(ctx context.Context) ([]store.Session, error)
}

func (v *queueView) store() queueStore { return v.s.x.svc.Store }

// refresh reloads the queue from the store (a few rows: fast enough for
// the UI goroutine, and readers never wait for a writer in WAL mode).
func (v *queueView) refresh() {
	ctx := context.Background()
	jobs, err := v.store().QueueJobs(ctx)
	v.err = err
	if err != nil {
		v.summary.SetText("Could not read the queue: " + err.Error())
		return
	}
	v.jobs = jobs
	v.paused, _ = v.store().QueuePaused(ctx)
	if c, err := v.store().QueueCounts(ctx); err == nil {
		v.counts = c
	}
	if r, err := v.store().MeasuredRate(ctx, 20); err == nil {
		v.rate = r
	}
	for id := range v.live {
		if j := v.job(id); j == nil || j.Status != store.StatusRunning {
			delete(v.live, id)
		}
	}
	v.recompute()
	v.rows = map[int64]*queueRow{}
	v.list.Refresh()
	v.empty.Hidden = len(jobs) > 0
	v.empty.Refresh()
	if v.paused {
		v.pause.SetText("Resume")
		v.pause.SetIcon(theme.MediaPlayIcon())
	} else {
		v.pause.SetText("Pause")
		v.pause.SetIcon(theme.MediaPauseIcon())
	}
}

func (v *queueView) job(id int64) *store.QueueJob {
	for i := range v.jobs {
		if v.jobs[i].ID == id {
			return &v.jobs[i]
		}
	}
	return nil
}

// recompute updates the ETAs and the summary line.
func (v *queueView) recompute() {
	v.eta = jobs.EstimateQueue(v.jobs, v.rate, v.live)
	c := v.counts
	waiting, running := c[store.StatusPending]+c[store.StatusInterrupted], c[store.StatusRunning]
	done, failed := c[store.StatusDone], c[store.StatusFailed]
	parts := []string{fmt.Sprintf("%d waiting", waiting), fmt.Sprintf("%d running", running), fmt.Sprintf("%d done", done)}
	if failed > 0 {
		parts = append(parts, fmt.Sprintf("%d failed", failed))
	}
	if waiting+running > 0 {
		switch {
		case len(v.eta.Job) > 0 && v.eta.Known:
			parts = append(parts, "queue ETA "+formatETA(v.eta.Total))
		case len(v.eta.Job) > 0:
			parts = append(parts, "ETA at least "+formatETA(v.eta.Total))
		default:
			parts = append(parts, "ETA after the first job")
		}
	}
	if v.paused {
		parts = append(parts, "paused")
	}
	v.summary.SetText(strings.Join(parts, " · "))
}

// event follows the queue runner.
func (v *queueView) event(e queueEvent) {
	switch e.kind {
	case jobs.QueueStarted:
		v.setHeldBy(nil) // a job starts here: this process holds the device
		v.live[e.job.ID] = jobs.NewLive()
		v.refresh()
	case jobs.QueueMessage:
		l, ok := v.live[e.job.ID]
		if !ok {
			l = jobs.NewLive()
		}
		e.ev.foldInto(&l)
		v.live[e.job.ID] = l
		if j := v.job(e.job.ID); j != nil && e.ev.kind == evProgress && e.ev.stage == "denoising" {
			j.Step, j.Total = e.ev.step, e.ev.total
		}
		v.recompute()
		// The running job's progress, and every ETA on screen: the fresh
		// speed changes the waiting jobs' estimates too.
		for id, r := range v.rows {
			if j := v.job(id); j != nil && r.id == id {
				r.show(j)
			}
		}
	case jobs.QueueFinished:
		delete(v.live, e.job.ID)
		v.refresh()
	case jobs.QueueIdle:
		// While another process runs the jobs, their progress and ends
		// reach this view only through the history.
		if v.paused != e.paused || v.heldBy != nil {
			v.refresh()
		}
	case jobs.QueueDeviceHeld:
		v.setHeldBy(e.holder)
	case jobs.QueueDeviceFree:
		v.setHeldBy(nil)
	case jobs.QueueStalled:
		msg, detail := "The worker could not start, so the queue waits (the jobs stay queued) and tries again in a while. "+
			"Run `atelier doctor` to check the worker.", ""
		var jerr *failure.JobError
		if errors.As(e.err, &jerr) {
			msg = sentence(jerr.Message) + ". " + msg
			detail = jerr.Detail
		}
		v.s.status.set(statusError, msg, detail)
		v.refresh()
	}
}

// setHeldBy shows (or, with nil, hides) the note that another Atelier
// process holds the device and runs the queue's jobs.
func (v *queueView) setHeldBy(l *store.Lease) {
	v.heldBy = l
	if l == nil {
		v.heldNote.Hide()
		return
	}
	what := "the GPU (" + l.Device + ")"
	switch l.Device {
	case "cpu":
		what = "the CPU"
	case "mps", "auto":
		what = "the GPU"
	}
	v.heldNote.SetText(fmt.Sprintf("Another Atelier process (%s) holds %s, so this window starts no worker there: "+
		"your jobs run on that process's worker and their progress shows here. If it ends, this window takes over.", l.Holder(), what))
	v.heldNote.Show()
	v.refresh()
}

func (v *queueView) report(err error) {
	if err != nil {
		v.s.status.set(statusError, sentence(err.Error()), "")
	}
	v.refresh()
}

func (v *queueView) move(id int64, m store.Move) {
	v.report(v.store().MoveJob(context.Background(), id, m))
}

func (v *queueView) cancelJob(id int64) {
	var err error
	if q := v.s.x.svc.Queue; q != nil {
		_, err = q.Cancel(context.Background(), id)
	} else {
		_, err = v.store().CancelJob(context.Background(), id)
	}
	v.report(err)
}

func (v *queueView) retry(id int64) {
	_, err := v.store().RetryJob(context.Background(), id)
	if err == nil {
		if q := v.s.x.svc.Queue; q != nil {
			q.Wake()
		}
	}
	v.report(err)
}

func (v *queueView) togglePause() {
	err := v.store().SetQueuePaused(context.Background(), !v.paused)
	if err == nil && v.paused {
		if q := v.s.x.svc.Queue; q != nil {
			q.Wake()
		}
	}
	v.report(err)
}

func (v *queueView) clearQueue(all bool) {
	_, err := v.store().ClearQueue(context.Background(), all)
	v.report(err)
}

// sessionRows is the sessions table: a header and one row per session.
func sessionRows(list []store.Session) [][]string {
	rows := [][]string{{"Session", "Started", "Jobs", "Done", "Failed", "Waiting", "Images", "Time", "it/s"}}
	for _, x := range list {
		rows = append(rows, []string{
			fmt.Sprintf("#%d %s (%s)", x.ID, x.Name, x.Source), x.CreatedAt.Local().Format("2006-01-02 15:04"),
			strconv.Itoa(x.Jobs), strconv.Itoa(x.Done), strconv.Itoa(x.Failed), strconv.Itoa(x.Pending),
			strconv.Itoa(x.Images), formatETA(time.Duration(x.TotalS * float64(time.Second))), fmt.Sprintf("%.2f", x.MeanItS),
		})
	}
	return rows
}

// showSessions shows every session's figures in a pop-up.
func (v *queueView) showSessions() {
	list, err := v.store().Sessions(context.Background())
	if err != nil {
		v.s.status.set(statusError, "Could not read the sessions: "+err.Error(), "")
		return
	}
	rows := sessionRows(list)
	grid := container.NewVBox()
	for i, r := range rows {
		cells := make([]fyne.CanvasObject, len(r))
		for k, cell := range r {
			l := widget.NewLabel(cell)
			l.Truncation = fyne.TextTruncateEllipsis
			if i == 0 {
				l.TextStyle = fyne.TextStyle{Bold: true}
			}
			cells[k] = l
		}
		// The session's name and start get the room they need; the figures
		// share the rest.
		h := cells[0].MinSize().Height
		name := container.NewHBox(container.NewGridWrap(fyne.NewSize(240, h), cells[0]),
			container.NewGridWrap(fyne.NewSize(150, h), cells[1]))
		figures := container.NewGridWithColumns(len(cells)-2, cells[2:]...)
		grid.Add(container.New(layout.NewBorderLayout(nil, nil, name, nil), name, figures)) // in reading order
		if i == 0 {
			grid.Add(widget.NewSeparator())
		}
	}
	var body fyne.CanvasObject = grid
	if len(list) == 0 {
		none := widget.NewLabel("No sessions yet: the first \"Add to queue\" of a sitting starts one.")
		body = container.NewVBox(grid, none)
	}
	// As tall as its rows, up to a screenful: one session is one row, not a
	// row floating at the top of an empty table.
	scroll := container.NewVScroll(body)
	scroll.SetMinSize(fyne.NewSize(980, min(body.MinSize().Height, 420)))
	var pop *widget.PopUp
	closeBtn := widget.NewButton("Close", func() { pop.Hide() })
	pop = newModal(container.NewBorder(heading("Sessions"),
		container.NewHBox(layout.NewSpacer(), closeBtn), nil, nil, scroll), v.s.win.Canvas())
	v.sessionsPop, v.sessionsGrid = pop, grid
	pop.Show()
}

func formatETA(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d s", int(d.Round(time.Second).Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d min %02d s", int(d.Minutes()), int(d.Seconds())%60)
	default:
		return fmt.Sprintf("%d h %02d min", int(d.Hours()), int(d.Minutes())%60)
	}
}

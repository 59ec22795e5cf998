package ui

import (
	"fmt"
	"strings"

	"atelier/core/store"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"
)

// queueRow is one job in the list.
type queueRow struct {
	widget.BaseWidget
	v                 *queueView
	id                int64
	status            *widget.Label
	title             *widget.Label
	info              *widget.Label
	bar               *widget.ProgressBar
	eta               *widget.Label
	up, down, top     *tipButton
	edit, cancel, use *tipButton
	retry             *tipButton
}

func newQueueRow(v *queueView) *queueRow {
	r := &queueRow{v: v, status: widget.NewLabel("interrupted"), title: widget.NewLabel(""), info: widget.NewLabel(""),
		bar: widget.NewProgressBar(), eta: widget.NewLabel("")}
	r.title.Truncation = fyne.TextTruncateEllipsis
	r.info.Truncation = fyne.TextTruncateEllipsis
	r.info.Importance = widget.LowImportance
	r.eta.Truncation = fyne.TextTruncateEllipsis
	r.status.TextStyle = fyne.TextStyle{Bold: true}
	icon := func(res fyne.Resource, tip string, f func()) *tipButton {
		b := newTipButton(res, tip, f)
		b.Importance = widget.LowImportance
		return b
	}
	r.up = icon(theme.MoveUpIcon(), "Move up", func() { v.move(r.id, store.MoveUp) })
	r.down = icon(theme.MoveDownIcon(), "Move down", func() { v.move(r.id, store.MoveDown) })
	r.top = icon(theme.UploadIcon(), "Move to the top", func() { v.move(r.id, store.MoveTop) })
	r.edit = icon(theme.DocumentCreateIcon(), "Edit in the form", func() { v.s.x.edit.open(r.id) })
	r.cancel = icon(theme.CancelIcon(), "Cancel this job", func() { v.cancelJob(r.id) })
	r.retry = icon(theme.ViewRefreshIcon(), "Run it again", func() { v.retry(r.id) })
	r.use = icon(theme.ContentRedoIcon(), "Use its settings in the form", func() {
		if j := v.job(r.id); j != nil {
			v.s.useSettings(j.Request)
		}
	})
	r.ExtendBaseWidget(r)
	return r
}

func (r *queueRow) CreateRenderer() fyne.WidgetRenderer {
	statusBox := container.NewGridWrap(fyne.NewSize(120, r.status.MinSize().Height), r.status)
	barBox := container.NewGridWrap(fyne.NewSize(140, r.bar.MinSize().Height), r.bar)
	etaBox := container.NewGridWrap(fyne.NewSize(170, r.eta.MinSize().Height), r.eta)
	right := container.NewHBox(barBox, etaBox, r.up, r.down, r.top, r.edit, r.use, r.retry, r.cancel)
	return widget.NewSimpleRenderer(container.NewBorder(nil, nil, statusBox, right,
		container.NewVBox(r.title, r.info)))
}

var statusLabels = map[string]string{
	store.StatusPending: "pending", store.StatusRunning: "running", store.StatusDone: "done",
	store.StatusFailed: "failed", store.StatusCancelled: "cancelled", store.StatusInterrupted: "interrupted",
}

func (r *queueRow) show(j *store.QueueJob) {
	r.id = j.ID
	r.v.rows[j.ID] = r
	req := j.Request
	st := statusLabels[j.Status]
	switch j.Status {
	case store.StatusDone:
		r.status.Importance = widget.SuccessImportance
	case store.StatusFailed:
		r.status.Importance = widget.DangerImportance
	case store.StatusInterrupted, store.StatusCancelled:
		r.status.Importance = widget.WarningImportance
	case store.StatusRunning:
		r.status.Importance = widget.HighImportance
	default:
		r.status.Importance = widget.MediumImportance
	}
	if j.CancelRequested {
		st = "cancelling"
	}
	r.status.SetText(fmt.Sprintf("#%d %s", j.ID, st))
	r.title.SetText(strings.Join(strings.Fields(req.Prompt), " "))
	info := fmt.Sprintf("%s · %d steps · %d × %d · seed %d", modelLabel(req.Model), req.Steps, req.Width, req.Height, req.Seed)
	if req.BatchSize > 1 {
		info += fmt.Sprintf(" · batch %d", req.BatchSize)
	}
	switch {
	case j.Status == store.StatusInterrupted:
		info = "stopped mid-job; runs again · " + info
	case j.ErrorMessage != "" && (j.Status == store.StatusFailed):
		info = j.ErrorCode + ": " + j.ErrorMessage
	}
	r.info.SetText(info)

	frac, etaText := 0.0, ""
	switch j.Status {
	case store.StatusRunning:
		if j.Total > 0 {
			frac = float64(j.Step) / float64(j.Total)
		}
		if d, ok := r.v.eta.Job[j.ID]; ok {
			etaText = fmt.Sprintf("%d/%d · %s left", j.Step, j.Total, formatETA(d))
		} else {
			etaText = fmt.Sprintf("%d/%d", j.Step, j.Total)
		}
	case store.StatusDone:
		frac = 1
		if m := j.Metrics; m != nil {
			etaText = fmt.Sprintf("%.1f s · %.2f it/s", m.TotalS, m.ItS)
		}
	case store.StatusPending, store.StatusInterrupted:
		if d, ok := r.v.eta.Job[j.ID]; ok {
			etaText = "about " + formatETA(d)
		}
	}
	r.bar.SetValue(frac)
	r.eta.SetText(etaText)

	waiting := j.Runnable()
	setEnabled(r.up, waiting)
	setEnabled(r.down, waiting)
	setEnabled(r.top, waiting)
	setEnabled(r.edit, j.Status == store.StatusPending)
	setEnabled(r.cancel, waiting || (j.Status == store.StatusRunning && !j.CancelRequested))
	setEnabled(r.retry, j.Status == store.StatusFailed || j.Status == store.StatusCancelled)
}

func setEnabled(b fyne.Disableable, on bool) {
	if on {
		b.Enable()
	} else {
		b.Disable()
	}
}

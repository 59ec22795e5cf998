package ui

import (
	"context"
	"errors"
	"fmt"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core/request"
	"atelier/core/store"
)

// queueEdit is the form's "editing a queued job" mode: Edit in the queue
// loads the pending job's whole request into the Studio form, so every
// feature the form has can be changed, and the bar above the form saves it
// back to the job or discards the change. UI goroutine only.
type queueEdit struct {
	s        *Studio
	id       int64           // the job being edited; 0 when not editing
	prev     request.Request // the form before editing, put back afterwards
	prevJobs string          // the batch count before editing
	bar      *fyne.Container
	label    *widget.Label
	save     *widget.Button
	discard  *widget.Button
}

func newQueueEdit(s *Studio) *queueEdit {
	e := &queueEdit{s: s, label: widget.NewLabel("")}
	e.label.TextStyle = fyne.TextStyle{Bold: true}
	e.label.Importance = widget.WarningImportance
	e.label.Wrapping = fyne.TextWrapWord
	e.save = widget.NewButtonWithIcon("Save to queue", theme.DocumentSaveIcon(), e.saveJob)
	e.save.Importance = widget.HighImportance
	e.discard = widget.NewButtonWithIcon("Discard", theme.CancelIcon(), e.discardEdit)
	e.bar = container.NewVBox(container.NewPadded(container.NewVBox(e.label,
		container.NewGridWithColumns(2, e.discard, e.save))), widget.NewSeparator())
	e.bar.Hide()
	return e
}

// pendingJobEditor is what the edit mode needs: to rewrite a job that has
// not started.
type pendingJobEditor interface {
	UpdatePendingJob(ctx context.Context, id int64, req request.Request) error
}

func (e *queueEdit) store() pendingJobEditor { return e.s.x.svc.Store }

// editing reports whether the form holds a queued job's settings.
func (e *queueEdit) editing() bool { return e.id != 0 }

// open loads pending job id into the form and brings the form to the front.
func (e *queueEdit) open(id int64) {
	j := e.s.x.queue.job(id)
	if j == nil || j.Status != store.StatusPending {
		return
	}
	f := e.s.form
	if !e.editing() {
		// The form is the user's draft: keep it to put back after the edit.
		e.prev, _ = f.request()
		e.prevJobs = f.batch.batchCount.Text
	}
	e.id = id
	f.set(j.Request)
	f.batch.batchCount.SetText("1") // one job is edited, not a batch of them
	f.batch.batchCount.Disable()
	e.label.SetText(fmt.Sprintf("Editing queued job #%d", id))
	e.bar.Show()
	e.s.x.tabs.SelectIndex(tabStudio)
	e.s.status.set(statusInfo, fmt.Sprintf("Change job #%d's settings in the form, then press Save to queue.", id), "")
}

// close leaves edit mode; restore puts the user's earlier draft back.
func (e *queueEdit) close(restore bool) {
	e.id = 0
	e.bar.Hide()
	f := e.s.form
	f.batch.batchCount.Enable()
	if restore {
		f.set(e.prev)
		f.batch.batchCount.SetText(e.prevJobs)
	}
}

func (e *queueEdit) discardEdit() {
	if !e.editing() {
		return
	}
	id := e.id
	e.close(true)
	e.s.status.set(statusInfo, fmt.Sprintf("Job #%d keeps its settings.", id), "")
}

// saveJob checks the form as Generate does and writes it to the pending job.
func (e *queueEdit) saveJob() {
	if !e.editing() {
		return
	}
	s, id := e.s, e.id
	req, verr := s.form.request()
	if rest := s.form.showErrors(verr); verr != nil {
		msg := "Fix the marked fields, then save again."
		if len(rest) > 0 {
			msg = verr.Error()
		}
		s.showMarked(msg, len(rest) == 0)
		return
	}
	req.PreviewEvery = 0
	req, err := request.PrepareForQueue(req)
	if err != nil {
		s.showRefusal(err)
		return
	}
	err = e.store().UpdatePendingJob(context.Background(), id, req)
	switch {
	case errors.Is(err, store.ErrNotPending):
		// The form keeps the changes, so they can still be queued or generated.
		e.close(false)
		s.status.set(statusWarn, fmt.Sprintf("Job #%d started before it was saved, so it runs with its old settings. "+
			"Your changes stay in the form: press Add to queue or Generate to use them.", id), "")
	case err != nil:
		s.status.set(statusError, fmt.Sprintf("Could not save job #%d: %s", id, err.Error()), "")
		return
	default:
		e.close(true)
		s.status.set(statusDone, fmt.Sprintf("Saved queued job #%d.", id), "")
	}
	s.x.queue.refresh()
}

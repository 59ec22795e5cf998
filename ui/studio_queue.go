package ui

import (
	"context"
	"errors"
	"fmt"
	"time"

	"atelier/core/failure"
	"atelier/core/jobs"
	"atelier/core/request"
	"atelier/core/store"
)

// queueSubmitter is what "Add to queue" needs: a session of this sitting,
// and the queue to add to.
type queueSubmitter interface {
	NewSession(ctx context.Context, name, source string) (int64, error)
	Enqueue(ctx context.Context, sessionID int64, reqs []request.Request) ([]int64, error)
	QueuePaused(ctx context.Context) (bool, error)
}

// AddToQueue validates the form and queues it as many times as its batch
// count says; the queue runs the jobs in the background.
func (s *Studio) AddToQueue() {
	if s.x == nil {
		return
	}
	req, ok := s.submittedRequest("add to the queue")
	if !ok {
		return
	}
	count, _ := s.form.count() // request() has checked it
	req.PreviewEvery = 0
	reqs, err := request.ExpandBatchCount(req, count)
	if err == nil {
		for i := range reqs {
			if reqs[i], err = request.PrepareForQueue(reqs[i]); err != nil {
				break
			}
		}
	}
	if err != nil {
		s.showRefusal(err)
		return
	}
	var st queueSubmitter = s.x.svc.Store
	ctx := context.Background()
	if s.x.session == 0 {
		if s.x.session, err = st.NewSession(ctx, "", store.SessionUI); err != nil {
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

// showRefusal shows why a request was refused: beside the fields it names,
// and in the status line.
func (s *Studio) showRefusal(err error) {
	if v, ok := request.AsValidation(err); ok {
		s.form.showErrors(v)
	}
	var jerr *failure.JobError
	if errors.As(err, &jerr) && jerr.Field != "" {
		s.form.showErrorText(jerr.Field, sentence(jerr.Message))
	}
	s.status.set(statusError, sentence(err.Error()), "")
	s.scrollToFirstMark()
}

// OnQueueEvent shows what the queue runner reports; it may be called from any
// goroutine.
func (s *Studio) OnQueueEvent(qe jobs.QueueEvent) {
	e := queueEventOf(qe)
	s.do(func() {
		if s.x == nil {
			return
		}
		s.x.queue.event(e)
		if e.kind == jobs.QueueStarted {
			s.showQueueWait()
		}
		if e.kind == jobs.QueueFinished && e.job != nil && e.job.Status == store.StatusDone {
			s.followNewest = true
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

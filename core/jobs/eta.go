package jobs

import (
	"time"

	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/spec"
	"atelier/core/store"
)

// Live is the progress of a running job as its messages report it.
type Live struct {
	Stage          string
	Step, Total    int
	Elapsed        float64 // seconds since the job was accepted
	DenoiseStarted float64 // Elapsed at the first denoising step, -1 before it
}

// NewLive returns the progress of a job that has not reported yet.
func NewLive() Live { return Live{DenoiseStarted: -1} }

// Update folds one worker message into the progress.
func (l *Live) Update(msg protocol.Message) {
	m, ok := msg.(protocol.Progress)
	if !ok {
		return
	}
	l.Stage, l.Elapsed = m.Stage, m.ElapsedS
	if m.Stage == spec.StageDenoising {
		if l.DenoiseStarted < 0 {
			l.DenoiseStarted = m.ElapsedS
			if m.Step > 0 {
				// Joined after denoising began: measure from the job's start,
				// which undercounts the speed a little but does not guess.
				l.DenoiseStarted = 0
			}
		}
		l.Step, l.Total = m.Step, m.Total
	}
}

// StepsPerS is the measured denoising speed of the job, if it has one.
func (l Live) StepsPerS() (float64, bool) {
	if l.DenoiseStarted < 0 || l.Step <= 0 {
		return 0, false
	}
	d := l.Elapsed - l.DenoiseStarted
	if d <= 0 {
		return 0, false
	}
	return float64(l.Step) / d, true
}

// Remaining estimates the time left of a running job: its remaining steps at
// its own measured speed when it has one, the queue's rate otherwise.
func (l Live) Remaining(req request.Request, r store.Rate) (time.Duration, bool) {
	left := max(req.Steps-l.Step, 0)
	// The hires pass comes after denoising; its own steps are not followed, so
	// all of it counts until the job ends.
	hires := req.HiresPixelSteps()
	if sps, ok := l.StepsPerS(); ok {
		s := float64(left)/sps + r.OverheadS/2 // decoding and saving still to come
		if hires > 0 {
			s += hires / req.PixelSteps(1) / sps
		}
		return time.Duration(s * float64(time.Second)), true
	}
	if !r.Known() {
		return 0, false
	}
	s := (req.PixelSteps(left)+hires)/r.PixelStepsPerS + r.OverheadS
	return time.Duration(s * float64(time.Second)), true
}

// QueueETA is the expected time left of each job and of the whole queue.
type QueueETA struct {
	Job   map[int64]time.Duration // for each running or waiting job with an estimate
	Total time.Duration           // sum over the jobs with an estimate
	Known bool                    // every running and waiting job has an estimate
}

// EstimateQueue estimates jobs (a queue view): running jobs from their live
// progress, waiting ones from rate. A running job's live speed also refines
// rate for the waiting jobs, since it is the freshest measurement.
func EstimateQueue(jobs []store.QueueJob, rate store.Rate, live map[int64]Live) QueueETA {
	eta := QueueETA{Job: map[int64]time.Duration{}, Known: true}
	for _, j := range jobs {
		if j.Status != store.StatusRunning {
			continue
		}
		l, ok := live[j.ID]
		if !ok {
			l = Live{Step: j.Step, Total: j.Total, DenoiseStarted: -1}
		}
		if sps, ok := l.StepsPerS(); ok {
			rate.PixelStepsPerS = j.Request.PixelSteps(1) * sps
		}
		if d, ok := l.Remaining(j.Request, rate); ok {
			eta.Job[j.ID] = d
			eta.Total += d
		} else {
			eta.Known = false
		}
	}
	for _, j := range jobs {
		if !j.Runnable() {
			continue
		}
		if d, ok := rate.Estimate(j.Request); ok {
			eta.Job[j.ID] = d
			eta.Total += d
		} else {
			eta.Known = false
		}
	}
	return eta
}

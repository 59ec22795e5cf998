package core

import (
	"context"
	"fmt"
	"time"

	"atelier/core/request"
)

// Rate is a measured generation speed. Its unit is pixel-steps per second
// (width × height × batch × steps / denoising seconds), so that one
// measurement estimates jobs of other sizes and step counts too.
type Rate struct {
	PixelStepsPerS float64 `json:"pixel_steps_per_s"`
	OverheadS      float64 `json:"overhead_s"` // mean time of a job outside denoising (load, encode, decode, save)
	Samples        int     `json:"samples"`
}

// Known reports whether the rate can estimate anything.
func (r Rate) Known() bool { return r.PixelStepsPerS > 0 }

func pixelSteps(req request.Request, steps int) float64 {
	if req.UpscaleOnly {
		return 0 // nothing is denoised
	}
	return float64(req.Width) * float64(req.Height) * float64(max(req.BatchSize, 1)) * float64(steps)
}

// hiresPixelSteps is the work of the hires pass: the iterations it runs
// (steps × strength) at the enlarged size, for every image of the batch.
func hiresPixelSteps(req request.Request) float64 {
	if req.HiresScale == 0 || req.UpscaleOnly {
		return 0
	}
	w, h := req.HiresSize()
	steps := req.HiresSteps
	if steps == 0 {
		steps = req.Steps
	}
	strength := req.HiresStrength
	if strength == 0 {
		strength = request.DefaultHiresStrength
	}
	return float64(w) * float64(h) * float64(max(req.BatchSize, 1)) * float64(steps) * strength
}

// Estimate is how long req should take from start to end.
func (r Rate) Estimate(req request.Request) (time.Duration, bool) {
	if !r.Known() {
		return 0, false
	}
	s := (pixelSteps(req, req.Steps)+hiresPixelSteps(req))/r.PixelStepsPerS + r.OverheadS
	return time.Duration(s * float64(time.Second)), true
}

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
func (l *Live) Update(m Message) {
	if m.Type != MsgProgress {
		return
	}
	l.Stage, l.Elapsed = m.Stage, m.ElapsedS
	if m.Stage == "denoising" {
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
func (l Live) Remaining(req request.Request, r Rate) (time.Duration, bool) {
	left := max(req.Steps-l.Step, 0)
	// The hires pass comes after denoising; its own steps are not followed, so
	// all of it counts until the job ends.
	hires := hiresPixelSteps(req)
	if sps, ok := l.StepsPerS(); ok {
		s := float64(left)/sps + r.OverheadS/2 // decoding and saving still to come
		if hires > 0 {
			s += hires / pixelSteps(req, 1) / sps
		}
		return time.Duration(s * float64(time.Second)), true
	}
	if !r.Known() {
		return 0, false
	}
	s := (pixelSteps(req, left)+hires)/r.PixelStepsPerS + r.OverheadS
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
func EstimateQueue(jobs []QueueJob, rate Rate, live map[int64]Live) QueueETA {
	eta := QueueETA{Job: map[int64]time.Duration{}, Known: true}
	for _, j := range jobs {
		if j.Status != StatusRunning {
			continue
		}
		l, ok := live[j.ID]
		if !ok {
			l = Live{Step: j.Step, Total: j.Total, DenoiseStarted: -1}
		}
		if sps, ok := l.StepsPerS(); ok {
			rate.PixelStepsPerS = pixelSteps(j.Request, 1) * sps
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

// MeasuredRate measures the speed of the last n done jobs (all of them when
// n <= 0) that report denoising times.
func (s *Store) MeasuredRate(ctx context.Context, n int) (Rate, error) {
	if n <= 0 {
		n = -1
	}
	var r Rate
	var px, den, over float64
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*),
		COALESCE(SUM(CAST(json_extract(params, '$.width') AS REAL) * json_extract(params, '$.height')
			* MAX(COALESCE(json_extract(params, '$.batch_size'), 1), 1) * (json_extract(params, '$.steps')
			+ COALESCE(json_extract(params, '$.hires_scale'), 0) * COALESCE(json_extract(params, '$.hires_scale'), 0)
			* COALESCE(NULLIF(json_extract(params, '$.hires_steps'), 0), json_extract(params, '$.steps'))
			* COALESCE(NULLIF(json_extract(params, '$.hires_strength'), 0), ?))), 0),
		COALESCE(SUM(denoise_s), 0), COALESCE(AVG(MAX(total_s - denoise_s, 0)), 0)
		FROM (SELECT params, denoise_s, total_s FROM jobs
			WHERE status = 'done' AND denoise_s > 0 ORDER BY id DESC LIMIT ?)`, request.DefaultHiresStrength, n).Scan(&r.Samples, &px, &den, &over)
	if err != nil {
		return Rate{}, fmt.Errorf("measure the generation speed: %w", err)
	}
	if den > 0 {
		r.PixelStepsPerS = px / den
	}
	r.OverheadS = over
	return r, nil
}

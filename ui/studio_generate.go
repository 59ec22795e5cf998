package ui

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"atelier/core/failure"
	"atelier/core/jobs"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
)

// Generate validates the form and, when it is valid, starts a job. Invalid
// fields are marked beside themselves and no job starts.
func (s *Studio) Generate() {
	if s.job != nil {
		return
	}
	req, ok := s.submittedRequest("generate")
	if !ok {
		return
	}
	count, _ := s.form.count() // validated with the request
	s.run(req, count, "Generating…")
}

// run starts count jobs of req (seeds following on), with the progress and
// the result shown as for Generate.
func (s *Studio) run(req request.Request, count int, label string) {
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
func (s *Studio) finish(j *jobRun, out *jobs.JobOutcome, err error) {
	if s.job != j {
		return
	}
	s.job = nil
	s.waitingFor = 0
	s.setRunning(false)
	s.form.afterJob(s.gen, out)
	p, _ := j.take()
	elapsed := formatElapsed(time.Since(j.start))
	j.mu.Lock()
	asked := j.cancelAsked
	j.mu.Unlock()

	var jerr *failure.JobError
	switch {
	case out != nil && len(out.Images) > 0:
		s.bar.SetValue(1)
		img := out.Images[0]
		rec := store.ImageRecord{Path: img.Path, Seed: img.Seed, Width: img.Width, Height: img.Height,
			Prompt: j.req.Prompt, Model: j.req.Model}
		s.view.showRecord(rec, metricsText(out.Metrics))
		s.barLabel.SetText(fmt.Sprintf("Done — %d/%d · %s", j.req.Steps, j.req.Steps, elapsed))
		msg := fmt.Sprintf("Saved to the history · seed %d", img.Seed)
		if j.req.UpscaleOnly { // no steps ran: the form's step count means nothing here
			s.barLabel.SetText(fmt.Sprintf("Done — upscaled to %d × %d · %s", img.Width, img.Height, elapsed))
			msg = fmt.Sprintf("Upscaled to %d × %d · saved to the history", img.Width, img.Height)
		}
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
		s.barLabel.SetText("Failed · " + elapsed)
		s.status.set(statusError, msg, jerr.Detail)
		s.scrollToFirstMark()
	default:
		if v, ok := request.AsValidation(err); ok {
			rest := s.form.showErrors(v)
			msg := "Fix the marked fields, then generate again."
			if len(rest) > 0 {
				msg = v.Error()
			}
			s.barLabel.SetText("Not started")
			s.showMarked(msg, len(rest) == 0)
			break
		}
		s.barLabel.SetText("Failed · " + elapsed)
		s.status.set(statusError, "The job could not run: "+err.Error()+
			". Try again; if it keeps failing, run `atelier doctor` to check the worker.", "")
	}
	s.refreshHistory()
}

func isCancelled(err error, asked bool) bool {
	var jerr *failure.JobError
	if errors.As(err, &jerr) {
		return jerr.Code == failure.ErrCancelled
	}
	// A runner that only returns the context's error still means the user's cancel.
	return asked && errors.Is(err, context.Canceled)
}

func detailOf(err error) string {
	var jerr *failure.JobError
	if errors.As(err, &jerr) {
		return jerr.Detail
	}
	return ""
}

func cancelText(p progressSnapshot, elapsed string) string {
	if p.Total > 0 {
		return fmt.Sprintf("Cancelled at %d/%d · %s", p.Step, p.Total, elapsed)
	}
	return "Cancelled · " + elapsed
}

func metricsText(m *protocol.Metrics) string {
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

// runJobs runs count jobs one after another, job k at seed + k × batch size
// (a random seed resolved once), and returns their images together. It stops
// at the first failure, returning what was made before it.
func runJobs(ctx context.Context, gen generator, req request.Request, count int, onEvent func(event)) (*jobs.JobOutcome, error) {
	if count <= 1 {
		return gen.Run(ctx, req, onEvent)
	}
	reqs, err := request.ExpandBatchCount(req, count)
	if err != nil {
		return nil, err
	}
	var merged *jobs.JobOutcome
	for k, r := range reqs {
		onEvent(event{kind: evJob, step: k + 1, total: len(reqs)})
		out, err := gen.Run(ctx, r, onEvent)
		if out != nil {
			if merged == nil {
				merged = &jobs.JobOutcome{}
			}
			merged.JobID, merged.UID, merged.Metrics, merged.ControlImages = out.JobID, out.UID, out.Metrics, out.ControlImages
			merged.Images = append(merged.Images, out.Images...)
		}
		if err != nil {
			return merged, err
		}
	}
	return merged, nil
}

// upscaleImage enlarges a finished image (A1111's Extras): with the upscaler
// and factor of the form's Upscale section when one is chosen, else Lanczos
// 2x. The job is recorded like any other, with src's settings, so the new
// image sits in the history and reloads like its source.
func (s *Studio) upscaleImage(path string, src request.Request) {
	if s.job != nil {
		s.status.set(statusWarn, "A job is running: upscale when it has finished.", "")
		return
	}
	req := src
	if req.Model == "" {
		req.Model = request.TinyModel // recorded only: an upscale loads no model
	}
	if strings.TrimSpace(req.Prompt) == "" {
		req.Prompt = "upscaled " + filepath.Base(path)
	}
	req.OutputDir, req.BatchSize, req.PreviewEvery = "", 1, 0
	req.UpscaleOnly, req.InitImage = true, path
	req.MaskImage, req.MaskBlur, req.MaskPadding, req.HiresScale, req.HiresSteps, req.HiresStrength = "", nil, 0, 0, 0, 0
	req.Strength, req.LoRAs, req.ControlNets, req.Refiner, req.RefinerSwitch, req.VAE = 0, nil, nil, "", 0, ""
	req.Upscaler, req.Upscale = request.LanczosUpscaler, request.DefaultUpscale
	if u := strings.TrimSpace(s.form.upscale.upscaler.Text); u != "" {
		req.Upscaler = u
		if f, err := strconv.ParseFloat(strings.TrimSpace(s.form.upscale.factor.Text), 64); err == nil {
			req.Upscale = f
		}
	}
	if s.x != nil {
		s.x.tabs.SelectIndex(tabStudio)
	}
	s.run(req, 1, fmt.Sprintf("Upscaling %s (%s, ×%g)…", filepath.Base(path), req.Upscaler, req.Upscale))
}

// submittedRequest reads and validates the form for an action (Generate, Add to
// queue) and remembers it; on invalid fields it marks them, says so in the
// status ("Fix the marked fields, then <action> again.") and reports false.
func (s *Studio) submittedRequest(action string) (request.Request, bool) {
	req, verr := s.form.request()
	if rest := s.form.showErrors(verr); verr != nil {
		msg := "Fix the marked fields, then " + action + " again."
		if len(rest) > 0 {
			msg = verr.Error()
		}
		s.showMarked(msg, len(rest) == 0)
		return req, false
	}
	s.form.save(s.app.Preferences(), req)
	s.saveLastRequest(req)
	return req, true
}

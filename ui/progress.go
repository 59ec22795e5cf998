package ui

import (
	"bytes"
	"fmt"
	"image"
	_ "image/png" // previews and results are PNG files
	"os"
	"sync"
	"time"

	"github.com/disintegration/imaging"

	"atelier/core/request"
	"atelier/core/spec"
)

// frameInterval caps UI updates from the event stream at about 60 a second:
// a fast GPU can report steps and previews far quicker than anyone can see,
// and every update costs a trip to the UI goroutine.
const frameInterval = 17 * time.Millisecond

// heartbeat refreshes the elapsed time while no event arrives (model loading
// can be silent for many seconds).
const heartbeat = 100 * time.Millisecond

// throttle coalesces kicks into calls of fn, at most one per interval, and
// always calls fn after the last kick so that the final state is shown.
type throttle struct {
	interval time.Duration
	kick     chan struct{}
}

func newThrottle(interval time.Duration) *throttle {
	return &throttle{interval: interval, kick: make(chan struct{}, 1)}
}

// Kick asks for a call of fn; it never blocks, so the event reader never waits on the UI.
func (t *throttle) Kick() {
	select {
	case t.kick <- struct{}{}:
	default: // a call is already due; it will see the newest state
	}
}

// run calls fn for kicks (and every beat, if beat > 0) until done closes.
func (t *throttle) run(done <-chan struct{}, beat time.Duration, fn func()) {
	var tick <-chan time.Time
	if beat > 0 {
		tk := time.NewTicker(beat)
		defer tk.Stop()
		tick = tk.C
	}
	var last time.Time
	for {
		select {
		case <-done:
			return
		case <-t.kick:
		case <-tick:
		}
		if wait := t.interval - time.Since(last); wait > 0 {
			select {
			case <-done:
				return
			case <-time.After(wait):
			}
		}
		last = time.Now()
		fn()
	}
}

// jobRun is one running job. The runner's goroutine writes the latest event
// state under mu; the UI goroutine reads it when the throttle fires.
type jobRun struct {
	req    request.Request
	start  time.Time
	cancel func()
	done   chan struct{} // closed when Run has returned
	frames *throttle

	mu          sync.Mutex
	snap        progressSnapshot
	preview     image.Image // newest decoded preview, nil once shown
	cancelAsked bool
	began       bool // the worker has reported on this job (it holds the worker)
}

// progressSnapshot is what the progress widgets show.
type progressSnapshot struct {
	Stage       string
	Step, Total int
	Note        string // the worker's start-up message, before any stage
	Device      string
	Refiner     bool // the job has a refiner: denoising is the base model's stage
	Job, Jobs   int  // job Job of Jobs, with a batch count above 1
	// Optimizing is the job's size ("1024×1024") while the worker builds the fast path
	// for it in the background: this job runs on the plain path, later ones will not.
	Optimizing string
	// NoFastPath is the worker's reason, said once, why this size gets no fast path
	// (too little free GPU memory to build it, a build out of memory).
	NoFastPath string
}

func newJobRun(req request.Request, cancel func()) *jobRun {
	return &jobRun{req: req, start: time.Now(), cancel: cancel, done: make(chan struct{}),
		frames: newThrottle(frameInterval), snap: progressSnapshot{Refiner: req.Refiner != ""}}
}

// onEvent receives the runner's stream on its goroutine. It only records the
// newest state; the throttle moves it to the widgets.
func (j *jobRun) onEvent(e event) {
	var preview image.Image
	if e.kind == evPreview && e.preview != "" {
		// The worker overwrites the preview file in turn, so read it whole
		// before decoding, and drop a torn read: the next preview follows soon.
		if b, err := os.ReadFile(e.preview); err == nil {
			if img, _, err := image.Decode(bytes.NewReader(b)); err == nil {
				preview = smoothPreview(img)
			}
		}
	}
	j.mu.Lock()
	if e.kind != evJob {
		j.began = true
	}
	switch e.kind {
	case evLoading:
		j.snap.Note = e.note
	case evHello:
		j.snap.Device = e.device
	case evProgress:
		if e.stage == spec.StageOptimizing {
			// A notice rather than a stage: it lasts while the job denoises.
			if e.note != "" {
				j.snap.NoFastPath = e.note
			} else {
				j.snap.Optimizing = fmt.Sprintf("%d×%d", j.req.Width, j.req.Height)
			}
			break
		}
		j.snap.Stage, j.snap.Step, j.snap.Total = e.stage, e.step, e.total
	case evJob:
		j.snap.Job, j.snap.Jobs = e.step, e.total
		j.snap.Stage, j.snap.Step, j.snap.Total = "", 0, 0
		j.snap.Optimizing, j.snap.NoFastPath = "", ""
	case evPreview:
		if preview != nil {
			j.preview = preview
		}
		if e.step > j.snap.Step {
			j.snap.Step = e.step
		}
	}
	j.mu.Unlock()
	j.frames.Kick()
}

// hasBegun reports whether the worker has reported on the job yet.
func (j *jobRun) hasBegun() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.began
}

// take returns the current state and any preview not yet shown.
func (j *jobRun) take() (progressSnapshot, image.Image) {
	j.mu.Lock()
	defer j.mu.Unlock()
	p := j.preview
	j.preview = nil
	return j.snap, p
}

// previewEdge is the size small previews are smoothed up to here, off the UI
// goroutine: a latent preview is 1/8 of the image, and blown up by the viewer it
// shows hard-edged blocks instead of the soft sketch it is.
const previewEdge = 512

func smoothPreview(img image.Image) image.Image {
	b := img.Bounds()
	if b.Dx() >= previewEdge || b.Dy() >= previewEdge || b.Dx() == 0 || b.Dy() == 0 {
		return img
	}
	if b.Dx() >= b.Dy() {
		return imaging.Resize(img, previewEdge, 0, imaging.Linear)
	}
	return imaging.Resize(img, 0, previewEdge, imaging.Linear)
}

var stageNames = map[string]string{
	"loading_model":       "loading model",
	"creating_tiny_model": "creating tiny model",
	"preprocessing":       "preparing images",
	"encoding":            "encoding prompt",
	"denoising":           "denoising",
	"refining":            "refiner — refining",
	"decoding":            "decoding",
	"hires":               "hires fix — redrawing",
	"upscaling":           "upscaling",
	"saving":              "saving",
}

// progressText is the label under the progress bar: "Stage — step/total · elapsed".
func progressText(p progressSnapshot, elapsed time.Duration) string {
	var s string
	switch {
	case p.Stage != "":
		s = stageNames[p.Stage]
		if s == "" {
			s = p.Stage
		}
		if p.Stage == "denoising" && p.Refiner {
			s = "base — denoising"
		}
	case p.Note != "":
		s = "starting worker — " + p.Note
	default:
		s = "starting"
	}
	if p.Total > 0 {
		s += fmt.Sprintf(" — %d/%d", p.Step, p.Total)
	}
	if p.Jobs > 1 {
		s = fmt.Sprintf("job %d/%d · %s", p.Job, p.Jobs, s)
	}
	s += " · " + formatElapsed(elapsed)
	if p.Optimizing != "" {
		s += " · optimizing for " + p.Optimizing + ": later images will be faster"
	}
	if p.NoFastPath != "" {
		s += " · " + p.NoFastPath
	}
	// A label of its own starts with a capital, as every label of the window does.
	return sentence(s)
}

// fraction is the progress bar's value: the share of steps done.
func (p progressSnapshot) fraction() (float64, bool) {
	if p.Total <= 0 {
		return 0, false
	}
	return float64(p.Step) / float64(p.Total), true
}

func formatElapsed(d time.Duration) string {
	if d < time.Minute {
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
	d = d.Round(time.Second)
	return fmt.Sprintf("%d min %02d s", int(d.Minutes()), int(d.Seconds())%60)
}

package ui

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"atelier/core/failure"
	"atelier/core/library"
)

// warmUp is the worker's start when the app opens: the first Generate then
// finds it ready instead of waiting for Python to import torch.
type warmUp struct {
	start  time.Time
	text   string       // the status shown while it starts
	stages []startStage // what the worker said it did, in order
	done   bool
	err    error
}

type startStage struct {
	name string
	at   time.Duration // since the start began
}

// Status texts of the start-up; the model hint follows "ready" while only the
// demo model is there.
const (
	warmStartingText = "Starting the worker: Python imports torch (20 s or more the first time)."
	demoStartHint    = " The first image also creates the demo model."
	demoModelHint    = " Demo model only: add your SDXL folder with the third button by Model."
	// getModelsHint is demoModelHint where the studio can download models:
	// shorter, so that it fits the status's two lines in a 1024 px window.
	getModelsHint = " Demo model only: Get models… by Model gets a real one."
)

// WarmUp starts the worker now, in the background (start is the bridge's
// Start). Each stage the worker reports through WorkerStarting is named under
// the buttons; the status says when it is ready, or why it is not.
func (s *Studio) WarmUp(start func(ctx context.Context) error) {
	w := &warmUp{start: time.Now()}
	s.warm = w
	w.text = warmStartingText
	if demoOnly(s.form.lib) {
		w.text += demoStartHint
	}
	s.status.set(statusInfo, w.text, "")
	s.showWarmStage()
	go func() {
		err := start(context.Background())
		s.do(func() { s.warmDone(w, err) })
	}()
}

// WorkerStarting tells the studio what a starting worker does (the bridge's
// OnStarting); any goroutine may call it.
func (s *Studio) WorkerStarting(message string) {
	s.do(func() {
		if w := s.warm; w != nil && !w.done {
			w.stages = append(w.stages, startStage{name: message, at: time.Since(w.start)})
		}
		if s.job != nil {
			// A job that waits for the worker shows the stage as its own.
			s.job.onEvent(event{kind: evLoading, note: message})
			return
		}
		s.showWarmStage()
	})
}

// showWarmStage names the newest start-up stage under the buttons.
func (s *Studio) showWarmStage() {
	w := s.warm
	if w == nil || w.done || s.job != nil {
		return
	}
	stage := "launching Python"
	if n := len(w.stages); n > 0 {
		stage = w.stages[n-1].name
	}
	s.barLabel.SetText(fmt.Sprintf("Starting the worker — %s · %s", stage, formatElapsed(time.Since(w.start))))
	s.showBusy(true)
}

// warmDone shows how the start ended, unless a job has taken the status since.
func (s *Studio) warmDone(w *warmUp, err error) {
	if s.warm != w {
		return
	}
	w.done, w.err = true, err
	s.form.refreshCapabilities(s.gen) // the worker's own schedulers and ControlNet types
	s.settingsWorkerReady()
	if s.job != nil {
		return // the job's progress and outcome say the rest
	}
	s.showBusy(false)
	ours := !s.status.box.Visible() || s.status.text.Text == w.text
	if err != nil {
		s.barLabel.SetText("Worker not started · Generate tries again")
		if ours {
			msg := err.Error()
			var je *failure.JobError
			detail := ""
			if errors.As(err, &je) {
				msg, detail = je.Message, je.Detail
			}
			s.status.set(statusError, sentence("The worker did not start. "+msg), detail)
		}
		return
	}
	s.barLabel.SetText("Ready · Ctrl+Enter generates")
	if !ours {
		return
	}
	msg := fmt.Sprintf("Worker ready (%s).", formatElapsed(time.Since(w.start)))
	switch {
	case demoOnly(s.form.lib) && s.x != nil && s.x.svc.Download != nil:
		msg += getModelsHint
	case demoOnly(s.form.lib):
		msg += demoModelHint
	}
	s.status.set(statusDone, msg, w.stageList())
}

// stageList is the start-up, stage by stage, for the status's Details.
func (w *warmUp) stageList() string {
	var b strings.Builder
	b.WriteString("Worker start-up:\n")
	for _, st := range w.stages {
		fmt.Fprintf(&b, "%8s  %s\n", formatElapsed(st.at), st.name)
	}
	return strings.TrimRight(b.String(), "\n")
}

// demoOnly reports whether the library holds no checkpoint of the user's own
// (an unscanned library counts as none).
func demoOnly(lib *library.Library) bool {
	return len(lib.Of(library.KindCheckpoint)) == 0
}

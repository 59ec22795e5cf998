package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"atelier/core/protocol"
)

// progress shows a job's stages on stderr: a bar redrawn in place on a
// terminal, plain lines (a few per stage) for logs and pipes.
type progress struct {
	w      io.Writer
	tty    bool
	stage  string
	tenth  int  // last tenth of the stage printed, for plain lines
	drawn  bool // a bar is on the current terminal line
	loaded bool // the worker said it was loading
	// refiner: the job has a refiner, so denoising is the base model's stage
	// and "refining" follows it.
	refiner bool
}

func newProgress(w io.Writer) *progress {
	return &progress{w: w, tty: isTerminal(w)}
}

// isTerminal reports whether w is a terminal that can redraw a line.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

var stageLabels = map[string]string{
	"loading_model":       "loading model",
	"creating_tiny_model": "creating tiny model",
	"preprocessing":       "preparing images",
	"encoding":            "encoding prompt",
	"optimizing":          "optimizing this size in the background (later images will be faster)",
	"denoising":           "denoising",
	"refining":            "refining (refiner)",
	"decoding":            "decoding",
	"upscaling":           "upscaling",
	"saving":              "saving",
}

func (p *progress) event(m protocol.Message) {
	switch m := m.(type) {
	case protocol.Loading:
		// On a terminal the start-up is a stage of the bar's line, redrawn in
		// place; a log gets its first line only.
		if p.tty {
			fmt.Fprintf(p.w, "\r\033[K%-19s %s", "starting worker", m.Message)
			p.drawn = true
		} else if !p.loaded {
			p.line(fmt.Sprintf("starting the worker: %s", m.Message))
		}
		p.loaded = true
	case protocol.Progress:
		p.progress(m)
	}
}

func (p *progress) progress(m protocol.Progress) {
	label := stageLabels[m.Stage]
	if label == "" {
		label = m.Stage
	}
	if m.Stage == "denoising" && p.refiner {
		label = "denoising (base)"
	}
	newStage := m.Stage != p.stage
	p.stage = m.Stage
	if p.tty {
		p.bar(label, m)
		return
	}
	// Plain output: the start of each stage, then every tenth of it.
	tenth := -1
	if m.Total > 0 {
		tenth = m.Step * 10 / m.Total
	}
	if !newStage && tenth == p.tenth {
		return
	}
	p.tenth = tenth
	if m.Total > 0 {
		fmt.Fprintf(p.w, "%s %d/%d (%.1fs)\n", label, m.Step, m.Total, m.ElapsedS)
	} else {
		fmt.Fprintf(p.w, "%s (%.1fs)\n", label, m.ElapsedS)
	}
}

const barWidth = 30

func (p *progress) bar(label string, m protocol.Progress) {
	s := fmt.Sprintf("%-19s", label)
	if m.Total > 0 {
		filled := min(barWidth, m.Step*barWidth/m.Total)
		s += fmt.Sprintf(" [%s%s] %d/%d", strings.Repeat("#", filled), strings.Repeat("-", barWidth-filled), m.Step, m.Total)
	}
	s += fmt.Sprintf("  %.1fs", m.ElapsedS)
	fmt.Fprint(p.w, "\r\033[K"+s)
	p.drawn = true
}

// line prints a whole line, above the bar if one is drawn.
func (p *progress) line(s string) {
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
		p.drawn = false
	}
	fmt.Fprintln(p.w, s)
}

// finish leaves the terminal on a fresh line.
func (p *progress) finish() {
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
		p.drawn = false
	}
}

package ui

import (
	"context"
	"strings"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core/request"
)

// The studio's note under Generate when the form's size would take minutes a
// step on the CPU (core's jobs.Runner.SlowCPUWarning, as `atelier generate`
// warns): it says so before the job runs, and blocks nothing.

// cpuWarner is a generator that can tell (runnerEvents over jobs.Runner).
type cpuWarner interface {
	slowCPUWarning(ctx context.Context, req request.Request) string
}

// cpuNoteLines is how many lines the note shows before it scrolls: the size,
// the time and the advice fit in them on a narrow form.
const cpuNoteLines = 3

type cpuNote struct {
	text  *widget.Label
	area  *container.Scroll
	seq   int // the newest check asked for
	shown int // the check on screen
}

func newCPUNote() *cpuNote {
	n := &cpuNote{text: widget.NewLabel("")}
	n.text.Wrapping = fyne.TextWrapWord
	n.text.Importance = widget.WarningImportance
	box := container.NewBorder(nil, nil, container.NewVBox(widget.NewIcon(theme.NewWarningThemedResource(theme.WarningIcon()))), nil, n.text)
	// A fixed height, as the status has: a wrapped label in a box has no
	// height of its own until it is laid out.
	probe := widget.NewLabel(strings.Repeat("\n", cpuNoteLines-1))
	n.area = container.NewVScroll(box)
	n.area.SetMinSize(fyne.NewSize(0, probe.MinSize().Height))
	n.area.Hide()
	return n
}

// updateCPUNote checks the form off the UI goroutine (the check reads the
// history's measured speed and the model on disk) and shows the outcome,
// unless a newer check was asked for meanwhile.
func (s *Studio) updateCPUNote() {
	w, ok := s.gen.(cpuWarner)
	if !ok || s.cpu == nil {
		return
	}
	s.cpu.seq++
	seq := s.cpu.seq
	req, verr := s.form.request()
	go func() {
		text := ""
		if verr == nil { // a form that cannot run says so on Generate
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			text = w.slowCPUWarning(ctx, req)
			cancel()
		}
		s.do(func() {
			if seq != s.cpu.seq {
				return
			}
			s.cpu.shown = seq
			if text == "" {
				s.cpu.area.Hide()
			} else {
				s.cpu.text.SetText(sentence(text) + ".")
				s.cpu.area.Show()
			}
			if s.actions != nil {
				s.actions.Refresh() // lays the buttons out around the note, or without it
			}
		})
	}()
}

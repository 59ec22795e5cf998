package ui

import (
	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/widget"
)

// taskProgress is the progress of a long task of a panel (the worker's
// set-up, a model download): a bar, the stage it is at, and when it fails,
// what happened, what to do and the technical detail. An empty line takes no
// room. UI goroutine only.
type taskProgress struct {
	bar     *widget.ProgressBar
	stage   *widget.Label // what runs now, or how it ended
	problem *widget.Label // what went wrong, in red
	todo    *widget.Label // "What to do: …"
	detail  *widget.Label // the tool's own words, monospace
	box     *fyne.Container
}

// newTaskProgress makes the block; oneLine keeps the stage to one line
// (cut), for a panel of fixed height.
func newTaskProgress(oneLine bool) *taskProgress {
	p := &taskProgress{bar: widget.NewProgressBar(), stage: widget.NewLabel(""), problem: widget.NewLabel(""),
		todo: widget.NewLabel(""), detail: widget.NewLabel("")}
	p.bar.Hide()
	if oneLine {
		p.stage.Truncation = fyne.TextTruncateEllipsis
	} else {
		p.stage.Wrapping = fyne.TextWrapWord
	}
	p.problem.Importance = widget.DangerImportance
	p.problem.Wrapping = fyne.TextWrapWord
	p.todo.Wrapping = fyne.TextWrapWord
	p.detail.TextStyle = fyne.TextStyle{Monospace: true}
	p.detail.Wrapping = fyne.TextWrapBreak
	for _, l := range []*widget.Label{p.stage, p.problem, p.todo, p.detail} {
		l.Hide()
	}
	p.box = container.NewVBox(p.bar, p.stage, p.problem, p.todo, p.detail)
	return p
}

// say sets a line, showing it only when it has text.
func say(l *widget.Label, text string) {
	l.SetText(text)
	l.Hidden = text == ""
	l.Refresh()
}

// begin shows an empty bar and the first stage, and clears an old failure.
func (p *taskProgress) begin(stage string) {
	p.clearFailure()
	p.bar.SetValue(0)
	p.bar.Show()
	say(p.stage, stage)
}

// step moves the bar to frac (a share of the whole; below 0: unknown, kept)
// and names the stage.
func (p *taskProgress) step(frac float64, stage string) {
	if frac >= 0 {
		p.bar.SetValue(frac)
	}
	say(p.stage, stage)
}

// succeed fills the bar and says how it ended.
func (p *taskProgress) succeed(text string) {
	p.bar.SetValue(1)
	say(p.stage, text)
}

// fail says what happened and what to do; the bar goes unless keepBar.
func (p *taskProgress) fail(problem, todo, detail string, keepBar bool) {
	if !keepBar {
		p.bar.Hide()
	}
	say(p.stage, "")
	say(p.problem, problem)
	if todo != "" {
		todo = "What to do: " + todo
	}
	say(p.todo, todo)
	say(p.detail, detail)
}

func (p *taskProgress) clearFailure() {
	for _, l := range []*widget.Label{p.problem, p.todo, p.detail} {
		say(l, "")
	}
}

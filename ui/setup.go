package ui

import (
	"context"
	"errors"
	"fmt"

	"atelier/core/setup"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/widget"
)

// SetupOptions say what the set-up screen builds: the venv for Requirements
// under Layout. State is what is on disk now (why set-up is due).
type SetupOptions struct {
	Layout       setup.Layout
	Requirements string
	State        setup.State
	FindLinks    string // a folder of wheels to install from, no network
	IndexURL     string // a package index; empty: $ATELIER_PIP_INDEX, then pip's own
	NeedBytes    int64  // disk space required; 0: setup.Estimate's
}

// setupScreen stands in for the studio until the worker's venv is built: it
// says which Python and folder it will use and what it downloads, runs the
// set-up with a progress bar, and on an error says what to do and stays, so
// the user can fix it and try again.
type setupScreen struct {
	opt  SetupOptions
	post func(func())
	done func() // on the UI goroutine, once set-up succeeded

	python   *widget.Label
	other    *widget.Entry
	start    *widget.Button
	prog     *taskProgress
	content  fyne.CanvasObject
	running  bool
	finished func(error) // tests: told after each attempt, on the UI goroutine
}

func newSetupScreen(opt SetupOptions, post func(func()), done func()) *setupScreen {
	s := &setupScreen{opt: opt, post: post, done: done}
	title := widget.NewLabelWithStyle("Set up Atelier's worker", fyne.TextAlignLeading, fyne.TextStyle{Bold: true})
	why := "Atelier draws with a Python worker, which needs its own Python environment with PyTorch. " +
		"This is done once; it downloads the worker's libraries."
	if len(opt.State.Stale) > 0 {
		why = "This version of Atelier needs newer worker libraries than the ones installed, " +
			"so its Python environment is built again (the old one is removed afterwards)."
	}
	intro := widget.NewLabel(why)
	intro.Wrapping = fyne.TextWrapWord

	s.python = widget.NewLabel("Looking for Python 3.10–3.12…")
	s.python.Wrapping = fyne.TextWrapWord
	s.other = widget.NewEntry()
	s.other.SetPlaceHolder("e.g. /usr/bin/python3.11 (empty: search PATH)")
	s.other.OnChanged = func(string) { s.findPython() }
	s.other.OnSubmitted = func(string) { s.Start() } // Enter in the field starts, as the button does
	download, disk := setup.Estimate(setup.Options{FindLinks: opt.FindLinks})
	if opt.NeedBytes > 0 {
		disk = opt.NeedBytes
	}
	size := fmt.Sprintf("about %s (about %s on disk)", setup.Size(download), setup.Size(disk))
	if download == 0 {
		size = fmt.Sprintf("nothing: from the folder %s (about %s on disk)", opt.FindLinks, setup.Size(disk))
	}
	venv := widget.NewLabel(opt.State.Venv)
	venv.Wrapping = fyne.TextWrapBreak
	downloadLabel := widget.NewLabel(size)
	form := widget.NewForm(
		widget.NewFormItem("Python", s.python),
		widget.NewFormItem("Another Python", s.other),
		widget.NewFormItem("Environment", venv),
		widget.NewFormItem("Download", downloadLabel),
	)

	s.start = widget.NewButton("Start set-up", s.Start)
	s.start.Importance = widget.HighImportance
	s.prog = newTaskProgress(false)

	body := container.NewVBox(title, intro, form, container.NewHBox(s.start), s.prog.box)
	s.content = container.NewVScroll(container.NewPadded(body))
	s.findPython()
	return s
}

// findPython shows which Python set-up would use, probed in the background.
func (s *setupScreen) findPython() {
	named := s.other.Text
	go func() {
		py, err := setup.FindPython(context.Background(), named)
		s.post(func() {
			if s.other.Text != named {
				return // a later edit probes again
			}
			if err != nil {
				s.python.SetText("None usable: " + errorText(err))
				return
			}
			s.python.SetText(fmt.Sprintf("%s (Python %s)", py.Path, py.Version))
		})
	}()
}

// Start runs set-up in the background; the screen shows its progress.
func (s *setupScreen) Start() {
	if s.running {
		return
	}
	s.running = true
	s.start.Disable()
	s.other.Disable()
	s.prog.begin("Starting…")
	opt := setup.Options{Python: s.other.Text, Requirements: s.opt.Requirements, FindLinks: s.opt.FindLinks,
		IndexURL: s.opt.IndexURL, NeedBytes: s.opt.NeedBytes,
		Progress: func(p setup.Progress) {
			s.post(func() { s.prog.step(p.Fraction, sentence(p.Message)) })
		}}
	go func() {
		_, err := setup.Install(context.Background(), s.opt.Layout, opt)
		s.post(func() { s.finish(err) })
	}()
}

func (s *setupScreen) finish(err error) {
	s.running = false
	if err == nil {
		s.prog.succeed("Done: opening the studio")
		if s.finished != nil {
			s.finished(nil)
		}
		s.done()
		return
	}
	var serr *setup.Error
	if errors.As(err, &serr) {
		s.prog.fail(serr.Message, serr.Todo, serr.Detail, false)
	} else {
		s.prog.fail(err.Error(), "", "", false)
	}
	s.start.SetText("Try again")
	s.start.Enable()
	s.other.Enable()
	if s.finished != nil {
		s.finished(err)
	}
}

func errorText(err error) string {
	var serr *setup.Error
	if errors.As(err, &serr) {
		return serr.Message
	}
	return err.Error()
}

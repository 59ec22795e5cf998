package ui

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core/failure"
	"atelier/core/verify"
)

// The detail view's "Check it reproduces": core's verify regenerates the
// image's job from its stored settings, as `atelier history verify` does,
// and the result shows under the image's parameters. Nothing is added to the
// history.

// checkState is the check of one image: running, or its result.
type checkState struct {
	running    bool
	text       string
	importance widget.Importance
}

func (v *detailView) newCheck() {
	v.check = widget.NewButtonWithIcon("Check it reproduces", theme.SearchReplaceIcon(), v.startCheck)
	v.checkBar = widget.NewProgressBarInfinite()
	v.checkBar.Hide()
	v.checkBar.Stop()
	v.checkNote = widget.NewLabel("")
	v.checkNote.Wrapping = fyne.TextWrapWord
	v.checkNote.Hide()
	v.checks = map[int64]*checkState{}
}

// regenerator is the studio's generator when it can regenerate a job.
func (v *detailView) regenerator() (reproducible, bool) {
	r, ok := v.g.s.gen.(reproducible)
	return r, ok
}

// showCheck shows the check of the image on display, and offers one when
// none runs (the worker runs one job at a time; a second check would wait).
func (v *detailView) showCheck() {
	_, can := v.regenerator()
	busy := false
	for _, c := range v.checks {
		busy = busy || c.running
	}
	if !can || busy || v.d == nil {
		v.check.Disable()
	} else {
		v.check.Enable()
	}
	var c *checkState
	if v.d != nil {
		c = v.checks[v.d.ID]
	}
	if c != nil && c.running {
		v.checkBar.Show()
		v.checkBar.Start()
	} else {
		v.checkBar.Stop()
		v.checkBar.Hide()
	}
	if c == nil || c.text == "" {
		v.checkNote.Hide()
		return
	}
	v.checkNote.Importance = c.importance
	v.checkNote.SetText(c.text)
	v.checkNote.Show()
	if v.scroll != nil {
		v.scroll.ScrollToBottom()
	}
}

func (v *detailView) startCheck() {
	rg, ok := v.regenerator()
	if !ok || v.d == nil {
		return
	}
	imageID, jobID := v.d.ID, v.d.JobID
	c := &checkState{running: true, text: "Regenerating the image from its stored settings…", importance: widget.MediumImportance}
	v.checks[imageID] = c
	v.showCheck()
	st, tempRoot := v.g.store(), v.g.s.x.svc.Paths.Cache
	start := time.Now()
	go func() {
		rep, err := rg.checkReproduces(context.Background(), st, jobID, tempRoot, func(e event) {
			if e.kind != evProgress && e.kind != evLoading {
				return
			}
			text := "Regenerating: " + progressText(progressSnapshot{Stage: e.stage, Step: e.step, Total: e.total, Note: e.note}, time.Since(start))
			v.g.s.do(func() {
				if c.running {
					c.text = text
					v.showCheck()
				}
			})
		})
		v.g.s.do(func() {
			c.running = false
			c.text, c.importance = checkResultText(rep, err, imageID)
			v.showCheck()
		})
	}()
}

// checkResultText says how the check of image imageID came out.
func checkResultText(rep *verify.Report, err error, imageID int64) (string, widget.Importance) {
	if err != nil {
		if errors.Is(err, verify.ErrBadInput) {
			return "Cannot check: " + strings.TrimPrefix(err.Error(), verify.ErrBadInput.Error()+": "), widget.WarningImportance
		}
		var jerr *failure.JobError
		if errors.As(err, &jerr) {
			return fmt.Sprintf("The check failed (%s): %s", jerr.Code, jerr.Message), widget.DangerImportance
		}
		return "The check failed: " + err.Error(), widget.DangerImportance
	}
	c := rep.Image(imageID)
	if c == nil {
		return "The check did not cover this image", widget.DangerImportance
	}
	var b strings.Builder
	imp := widget.SuccessImportance
	if c.Identical {
		b.WriteString("Reproduces: regenerated from its settings, identical pixel for pixel.")
	} else {
		imp = widget.WarningImportance
		b.WriteString("Does not reproduce exactly: it " + c.Summary() + ".")
	}
	if others := len(rep.Images) - 1; others > 0 {
		if othersIdentical(rep, imageID) {
			fmt.Fprintf(&b, " The job's %d other image(s): identical.", others)
		} else {
			fmt.Fprintf(&b, " Of the job's %d other image(s), some differ.", others)
		}
	}
	if len(rep.Differences) == 0 {
		fmt.Fprintf(&b, "\nSame device (%s), dtype (%s), versions and speed settings as the recorded run.", rep.Now.Device, rep.Now.Dtype)
	} else {
		b.WriteString("\nWhat differs from the recorded run:")
		for _, d := range rep.Differences {
			b.WriteString("\n• " + d.String())
		}
	}
	return b.String(), imp
}

func othersIdentical(rep *verify.Report, imageID int64) bool {
	for _, c := range rep.Images {
		if c.ImageID != imageID && !c.Identical {
			return false
		}
	}
	return true
}

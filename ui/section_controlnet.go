package ui

import (
	"fmt"
	"strconv"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/canvas"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core/jobs"
	"atelier/core/library"
	"atelier/core/protocol"
	"atelier/core/request"
)

// controlNetSection is the list of ControlNet units, each a row of its own,
// and the control images the last job's units saw.
type controlNetSection struct {
	fields      *formFields
	box         *fyne.Container
	rows        []*cnRow
	add         *widget.Button
	images      *fyne.Container
	imagesTitle *widget.Label
	lib         *library.Library
	caps        *protocol.Capabilities
}

// cnRow is one ControlNet unit.
type cnRow struct {
	kind                *widget.Select
	model               *escSelectEntry
	image               *escEntry
	scale, start, end   *submitEntry
	cannyLow, cannyHigh *submitEntry
	canny               *fyne.Container
	remove              *tipButton
	err                 *widget.Label
	box                 fyne.CanvasObject
}

var cnFields = []string{"type", "model", "image", "scale", "start", "end", "canny_low", "canny_high"}

func newControlNetSection(ff *formFields) *controlNetSection {
	s := &controlNetSection{fields: ff, box: container.NewVBox()}
	s.add = widget.NewButtonWithIcon("Add ControlNet", theme.ContentAddIcon(), func() {
		s.addRow(request.DefaultControlNet())
	})
	s.imagesTitle = widget.NewLabel("")
	s.imagesTitle.SizeName = theme.SizeNameCaptionText
	s.imagesTitle.Hide()
	s.images = container.NewGridWrap(fyne.NewSize(96, 96))
	s.images.Hide()
	return s
}

func (s *controlNetSection) owns(field string) bool {
	return field == fControlNets || strings.HasPrefix(field, fControlNets+"[")
}

func (s *controlNetSection) options() []string {
	return append([]string{request.TinyControlNet}, s.lib.Paths(library.KindControlNet)...)
}

func (s *controlNetSection) types() []string {
	if s.caps != nil && len(s.caps.ControlNetTypes) > 0 {
		return s.caps.ControlNetTypes
	}
	return request.ControlNetTypes
}

func (s *controlNetSection) setLibrary(lib *library.Library) {
	s.lib = lib
	for _, r := range s.rows {
		s.fields.setChoices(r.model, s.options())
	}
}

// setCapabilities offers the unit types of a worker's hello.
func (s *controlNetSection) setCapabilities(c *protocol.Capabilities) {
	s.caps = c
	for _, r := range s.rows {
		r.kind.SetOptions(s.types())
	}
}

func (s *controlNetSection) addRow(c request.ControlNet) *cnRow {
	ff := s.fields
	r := &cnRow{err: errLabel()}
	clear := func(string) { r.err.Hide(); ff.edited() }
	r.kind = widget.NewSelect(s.types(), func(k string) {
		r.err.Hide()
		if r.canny != nil {
			if k == "canny" {
				r.canny.Show()
			} else {
				r.canny.Hide()
			}
		}
	})
	r.model = newEscSelectEntry(nil)
	ff.setChoices(r.model, s.options())
	r.model.SetPlaceHolder("tiny-controlnet or a ControlNet folder")
	r.model.changed(clear)
	r.image = newEscEntry()
	r.image.SetPlaceHolder("control image (resized to the output size)")
	r.image.changed(clear)
	num := func() *submitEntry {
		e := ff.submitEntry(false)
		e.OnChanged = clear
		return e
	}
	r.scale, r.start, r.end, r.cannyLow, r.cannyHigh = num(), num(), num(), num(), num()
	r.remove = newTipButton(theme.DeleteIcon(), "Remove this ControlNet", func() { s.removeRow(r) })
	browseModel := ff.browseButton(true, "Choose a ControlNet folder", func(p string) { r.model.SetText(p) })
	browseImage := ff.browseButton(false, "Choose a control image", func(p string) { r.image.SetText(p) }, "png", "jpg", "jpeg", "webp")
	r.canny = container.NewGridWithColumns(2,
		labelled("Low threshold", r.cannyLow), labelled("High threshold", r.cannyHigh))

	r.model.SetText(c.Model)
	r.image.SetText(c.Image)
	r.scale.SetText(formatFloat(c.Scale))
	r.start.SetText(formatFloat(c.Start))
	r.end.SetText(formatFloat(c.End))
	r.cannyLow.SetText(strconv.Itoa(c.CannyLow))
	r.cannyHigh.SetText(strconv.Itoa(c.CannyHigh))
	r.kind.SetSelected(c.Type)

	r.box = container.NewVBox(
		container.NewBorder(nil, nil, caption("Type"), r.remove, r.kind),
		container.NewBorder(nil, nil, nil, browseModel, r.model),
		container.NewBorder(nil, nil, nil, browseImage, r.image),
		container.NewGridWithColumns(3, labelled("Scale", r.scale), labelled("Start", r.start), labelled("End", r.end)),
		r.canny,
		r.err,
		widget.NewSeparator())
	s.rows = append(s.rows, r)
	s.reindex()
	return r
}

func (s *controlNetSection) removeRow(r *cnRow) {
	for i, x := range s.rows {
		if x == r {
			s.rows = append(s.rows[:i], s.rows[i+1:]...)
			break
		}
	}
	s.reindex()
}

// reindex registers each row's error label under its current field names
// (controlnets[0].scale …) and rebuilds the list, after a row came or went.
func (s *controlNetSection) reindex() {
	errs := s.fields.errs
	for name := range errs {
		if m := reRowField.FindStringSubmatch(name); m != nil && m[1] == fControlNets {
			delete(errs, name)
		}
	}
	objs := make([]fyne.CanvasObject, 0, len(s.rows))
	for i, r := range s.rows {
		for _, fl := range cnFields {
			errs[fmt.Sprintf("controlnets[%d].%s", i, fl)] = r.err
		}
		objs = append(objs, r.box)
	}
	s.box.Objects = objs
	s.box.Refresh()
	s.fields.relayout()
	if len(s.rows) >= request.MaxControlNets {
		s.add.Disable()
	} else {
		s.add.Enable()
	}
	s.fields.edited()
}

func (s *controlNetSection) set(r request.Request) {
	s.rows = nil
	for _, c := range r.ControlNets {
		s.addRow(c)
	}
	s.reindex()
}

func (s *controlNetSection) read(r *request.Request, errs *[]*request.FieldError) {
	p := parsed{errs}
	for i, row := range s.rows {
		n := func(f string) string { return fmt.Sprintf("controlnets[%d].%s", i, f) }
		c := request.ControlNet{Type: row.kind.Selected, Model: strings.TrimSpace(row.model.Text),
			Image: strings.TrimSpace(row.image.Text),
			Scale: p.float(n("scale"), row.scale.Text), Start: p.float(n("start"), row.start.Text),
			End: p.float(n("end"), row.end.Text), CannyLow: request.DefaultCannyLow, CannyHigh: request.DefaultCannyHigh}
		if c.Type == "canny" {
			c.CannyLow = p.integer(n("canny_low"), row.cannyLow.Text)
			c.CannyHigh = p.integer(n("canny_high"), row.cannyHigh.Text)
		}
		r.ControlNets = append(r.ControlNets, c)
	}
}

// showResult shows the preprocessed control images a finished job reports.
func (s *controlNetSection) showResult(out *jobs.JobOutcome) {
	objs := make([]fyne.CanvasObject, 0, len(out.ControlImages))
	for _, p := range out.ControlImages {
		img := canvas.NewImageFromFile(p)
		img.FillMode = canvas.ImageFillContain
		img.SetMinSize(fyne.NewSize(96, 96))
		objs = append(objs, img)
	}
	s.images.Objects = objs
	s.images.Refresh()
	if len(objs) > 0 {
		s.imagesTitle.SetText("What the ControlNets saw (last job)")
		s.imagesTitle.Show()
		s.images.Show()
	} else {
		s.imagesTitle.Hide()
		s.images.Hide()
	}
	s.fields.relayout()
}

func (s *controlNetSection) content() fyne.CanvasObject {
	return container.NewVBox(s.box, s.fields.errs[fControlNets], s.add, s.imagesTitle, s.images)
}

package ui

import (
	"fmt"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core/library"
	"atelier/core/request"
)

// loraSection is the list of LoRAs, each a row of its own.
type loraSection struct {
	fields *formFields
	box    *fyne.Container
	rows   []*loraRow
	add    *widget.Button
	lib    *library.Library
}

// loraRow is one LoRA: a path (library choice or typed) and a weight.
type loraRow struct {
	path   *escSelectEntry
	weight *submitEntry
	slider *widget.Slider
	remove *tipButton
	err    *widget.Label
	box    fyne.CanvasObject
}

var loraFields = []string{"path", "weight"}

func newLoRASection(ff *formFields) *loraSection {
	s := &loraSection{fields: ff, box: container.NewVBox()}
	s.add = widget.NewButtonWithIcon("Add LoRA", theme.ContentAddIcon(), func() {
		s.addRow(request.LoRA{Path: request.TinyLoRA, Weight: 1})
	})
	return s
}

func (s *loraSection) owns(field string) bool {
	return field == fLoRAs || strings.HasPrefix(field, fLoRAs+"[")
}

func (s *loraSection) options() []string {
	return append([]string{request.TinyLoRA}, s.lib.Paths(library.KindLoRA)...)
}

func (s *loraSection) setLibrary(lib *library.Library) {
	s.lib = lib
	for _, r := range s.rows {
		s.fields.setChoices(r.path, s.options())
	}
}

func (s *loraSection) addRow(l request.LoRA) *loraRow {
	ff := s.fields
	r := &loraRow{}
	r.path = newEscSelectEntry(nil)
	ff.setChoices(r.path, s.options())
	r.path.SetPlaceHolder("tiny-lora or a LoRA .safetensors")
	r.path.AlwaysShowValidationError = true
	r.weight = ff.submitEntry(false)
	r.slider = widget.NewSlider(request.MinLoRAWeight, request.MaxLoRAWeight)
	r.slider.Step = 0.05
	r.err = errLabel()
	r.remove = newTipButton(theme.DeleteIcon(), "Remove this LoRA", func() { s.removeRow(r) })
	browse := ff.browseButton(false, "Choose a LoRA (.safetensors)", func(p string) { r.path.SetText(p) }, "safetensors")
	r.path.changed(func(string) { r.err.Hide(); ff.edited() })
	ff.linkSliderLabel(r.err, r.weight, r.slider, formatHundredths)
	r.path.SetText(l.Path)
	r.weight.SetText(formatFloat(l.Weight))
	r.box = container.NewVBox(
		container.NewBorder(nil, nil, nil, container.NewHBox(browse, r.remove), r.path),
		container.NewBorder(nil, nil, caption("Weight"), narrowEntry(r.weight), r.slider),
		r.err)
	s.rows = append(s.rows, r)
	s.reindex()
	return r
}

func (s *loraSection) removeRow(r *loraRow) {
	for i, x := range s.rows {
		if x == r {
			s.rows = append(s.rows[:i], s.rows[i+1:]...)
			break
		}
	}
	s.reindex()
}

// reindex registers each row's error label under its current field names
// (loras[0].weight …) and rebuilds the list, after a row came or went.
func (s *loraSection) reindex() {
	errs := s.fields.errs
	for name := range errs {
		if m := reRowField.FindStringSubmatch(name); m != nil && m[1] == fLoRAs {
			delete(errs, name)
		}
	}
	objs := make([]fyne.CanvasObject, 0, len(s.rows))
	for i, r := range s.rows {
		for _, fl := range loraFields {
			errs[fmt.Sprintf("loras[%d].%s", i, fl)] = r.err
		}
		objs = append(objs, r.box)
	}
	s.box.Objects = objs
	s.box.Refresh()
	s.fields.relayout()
	if len(s.rows) >= request.MaxLoRAs {
		s.add.Disable()
	} else {
		s.add.Enable()
	}
	s.fields.edited()
}

func (s *loraSection) set(r request.Request) {
	s.rows = nil
	for _, l := range r.LoRAs {
		s.addRow(l)
	}
	s.reindex()
}

func (s *loraSection) read(r *request.Request, errs *[]*request.FieldError) {
	p := parsed{errs}
	for i, row := range s.rows {
		r.LoRAs = append(r.LoRAs, request.LoRA{Path: strings.TrimSpace(row.path.Text),
			Weight: p.float(fmt.Sprintf("loras[%d].weight", i), row.weight.Text)})
	}
}

func (s *loraSection) content() fyne.CanvasObject {
	return container.NewVBox(s.box, s.fields.errs[fLoRAs], s.add)
}

package ui

import (
	"strconv"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core/request"
)

const customSize = "Custom"

// sizePreset is one of SDXL's trained resolutions (about one megapixel), which
// give far better images than arbitrary sizes.
type sizePreset struct {
	label string
	w, h  int
}

var sizePresets = []sizePreset{
	{"1024 × 1024  square", 1024, 1024},
	{"1152 × 896  landscape 9:7", 1152, 896},
	{"1216 × 832  landscape 3:2", 1216, 832},
	{"1344 × 768  landscape 16:9", 1344, 768},
	{"1536 × 640  cinema 21:9", 1536, 640},
	{"896 × 1152  portrait 7:9", 896, 1152},
	{"832 × 1216  portrait 2:3", 832, 1216},
	{"768 × 1344  portrait 9:16", 768, 1344},
	{"512 × 512  quick draft", 512, 512},
}

// sizeSection is the image size: a preset, or a typed width and height.
type sizeSection struct {
	fields        *formFields
	preset        *widget.Select
	width, height *submitEntry
	swap          *tipButton
	// onChange follows a typed size (the hires fix shows what it makes of it).
	onChange func()
}

func newSizeSection(ff *formFields) *sizeSection {
	s := &sizeSection{fields: ff}
	labels := make([]string, 0, len(sizePresets)+1)
	for _, p := range sizePresets {
		labels = append(labels, p.label)
	}
	s.preset = widget.NewSelect(append(labels, customSize), s.presetChosen)
	s.width = ff.entry(fWidth, false)
	s.width.SetPlaceHolder("width")
	s.height = ff.entry(fHeight, false)
	s.height.SetPlaceHolder("height")
	for name, e := range map[string]*submitEntry{fWidth: s.width, fHeight: s.height} {
		e.OnChanged = func(string) {
			ff.clearError(name)
			s.matchPreset()
			ff.edited()
			if s.onChange != nil {
				s.onChange()
			}
		}
	}
	s.swap = newTipButton(swapIcon, "Swap width and height", func() {
		w, h := s.width.Text, s.height.Text
		s.width.SetText(h)
		s.height.SetText(w)
	})
	return s
}

func (s *sizeSection) presetChosen(label string) {
	if s.fields.syncing {
		return
	}
	for _, p := range sizePresets {
		if p.label == label {
			s.fields.syncing = true
			s.width.SetText(strconv.Itoa(p.w))
			s.height.SetText(strconv.Itoa(p.h))
			s.fields.syncing = false
			return
		}
	}
}

// matchPreset shows the preset that the typed size matches, or Custom.
func (s *sizeSection) matchPreset() {
	if s.fields.syncing {
		return
	}
	label := customSize
	w, _ := strconv.Atoi(strings.TrimSpace(s.width.Text))
	h, _ := strconv.Atoi(strings.TrimSpace(s.height.Text))
	for _, p := range sizePresets {
		if p.w == w && p.h == h {
			label = p.label
		}
	}
	s.fields.syncing = true
	s.preset.SetSelected(label)
	s.fields.syncing = false
}

func (s *sizeSection) set(r request.Request) {
	s.width.SetText(strconv.Itoa(r.Width))
	s.height.SetText(strconv.Itoa(r.Height))
}

func (s *sizeSection) read(r *request.Request, errs *[]*request.FieldError) {
	p := parsed{errs}
	r.Width = int(p.integer64(fWidth, s.width.Text))
	r.Height = int(p.integer64(fHeight, s.height.Text))
}

// fit sets the size to a picture's, down to multiples of 8; a picture past
// the largest size is scaled down whole, keeping its shape.
func (s *sizeSection) fit(width, height int) {
	scale := min(1, float64(request.MaxSize)/float64(max(width, height)))
	fit := func(v int) int {
		return max(int(float64(v)*scale)/request.SizeMultiple*request.SizeMultiple, request.MinSize)
	}
	s.width.SetText(strconv.Itoa(fit(width)))
	s.height.SetText(strconv.Itoa(fit(height)))
}

func (s *sizeSection) content() fyne.CanvasObject {
	times := widget.NewLabel("×")
	row := container.New(&sizeLayout{}, s.width, times, s.height, s.swap)
	return container.NewVBox(caption("Size"), s.preset, row, s.fields.errs[fWidth], s.fields.errs[fHeight])
}

// sizeLayout puts width × height [swap] in a row: the two entries share the
// space, the "×" and the button keep their own width.
type sizeLayout struct{}

func (*sizeLayout) MinSize(objs []fyne.CanvasObject) fyne.Size {
	w, h := float32(0), float32(0)
	for _, o := range objs {
		m := o.MinSize()
		w += m.Width + theme.Padding()
		h = max(h, m.Height)
	}
	return fyne.NewSize(w, h)
}

func (*sizeLayout) Layout(objs []fyne.CanvasObject, size fyne.Size) {
	width, times, height, swap := objs[0], objs[1], objs[2], objs[3]
	pad := theme.Padding()
	tw, sw := times.MinSize().Width, swap.MinSize().Width
	ew := (size.Width - tw - sw - 3*pad) / 2
	x := float32(0)
	for _, p := range []struct {
		o fyne.CanvasObject
		w float32
	}{{width, ew}, {times, tw}, {height, ew}, {swap, sw}} {
		p.o.Move(fyne.NewPos(x, 0))
		p.o.Resize(fyne.NewSize(p.w, size.Height))
		x += p.w + pad
	}
}

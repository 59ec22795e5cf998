package ui

import (
	"context"
	"image/color"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/test"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// layoutStudio is the studio's window at a size, laid out, every section open.
func layoutStudio(t *testing.T, w, h float32) testStudio {
	t.Helper()
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	s.app.Settings().SetTheme(newStudioTheme())
	s.win.SetContent(s.layout())
	s.win.Resize(fyne.NewSize(w, h))
	for i := range s.form.accordion.Items {
		s.form.accordion.Open(i)
	}
	return s
}

// gapBelow is the blank height between the bottom of a section's fields and
// the next header: zero when the section fits its content.
func gapBelow(f *form, i int) float32 {
	d := f.accordion.Items[i].Detail
	return d.Size().Height - d.MinSize().Height
}

func TestRemovingAControlNetLeavesNoGap(t *testing.T) {
	s := layoutStudio(t, 1320, 860)
	f := s.form
	i := 2 // ControlNet
	require.Equal(t, "ControlNet", foldedTitles[i])
	for j := range f.accordion.Items {
		if j != i {
			f.accordion.Close(j)
		}
	}
	test.Tap(f.controlNet.add)
	test.Tap(f.controlNet.add)
	withTwo := f.accordion.Items[i].Detail.Size().Height
	test.Tap(f.controlNet.rows[0].remove)
	assert.Less(t, f.accordion.Items[i].Detail.Size().Height, withTwo, "the section shrinks with its rows")
	assert.Zero(t, gapBelow(f, i), "no blank space where the row was")
	test.Tap(f.controlNet.rows[0].remove)
	assert.Zero(t, gapBelow(f, i))
	// The next header follows the section's last widget.
	assert.Equal(t, f.accordion.MinSize().Height, f.accordion.Size().Height, "the sections take no more than they need")
}

func TestHiresFixHasNoEmptyHintLine(t *testing.T) {
	s := layoutStudio(t, 1320, 860)
	f := s.form
	off := f.accordion.Items[6].Detail.MinSize().Height
	require.Equal(t, "Hires fix", foldedTitles[6])
	assert.False(t, f.hires.hint.Visible(), "no pass, no hint, no blank line")
	f.hires.scale.SetText("2")
	assert.True(t, f.hires.hint.Visible())
	assert.Greater(t, f.accordion.Items[6].Detail.MinSize().Height, off)
	f.hires.scale.SetText("")
	assert.False(t, f.hires.hint.Visible())
	assert.Zero(t, gapBelow(f, 6), "the line the hint took is gone")

	// The paragraph on top wraps to the section's width and takes no more
	// height than its lines, at either window size.
	for _, w := range []float32{1320, 1024} {
		s.win.Resize(fyne.NewSize(w, 860))
		s.q.drain()
		var about *wrapLabel
		walkObjects(f.accordion.Items[6].Detail, func(o fyne.CanvasObject) {
			if l, ok := o.(*wrapLabel); ok {
				about = l
			}
		})
		require.NotNil(t, about)
		assert.Equal(t, about.MinSize().Height, about.Size().Height, "no blank under the paragraph at %v", w)
		assert.Zero(t, gapBelow(f, 6))
	}
}

// entryOf is the widget.Entry inside one of the form's entry types.
func entryOf(o fyne.CanvasObject) *widget.Entry {
	switch x := o.(type) {
	case *escEntry:
		return &x.Entry
	case *escSelectEntry:
		return &x.Entry
	case *submitEntry:
		return &x.Entry
	}
	return nil
}

func walkObjects(o fyne.CanvasObject, visit func(fyne.CanvasObject)) {
	visit(o)
	switch x := o.(type) {
	case *fyne.Container:
		for _, c := range x.Objects {
			walkObjects(c, visit)
		}
	case fyne.Widget:
		for _, c := range test.WidgetRenderer(x).Objects() {
			walkObjects(c, visit)
		}
	}
}

// At 1024 × 700 every hint written in an empty field fits it whole.
func TestFieldHintsFitTheirFieldsAtTheSmallWindow(t *testing.T) {
	s := layoutStudio(t, 1024, 700)
	f := s.form
	test.Tap(f.controlNet.add)
	test.Tap(f.lora.add)
	s.win.Resize(fyne.NewSize(1024, 700))
	seen := 0
	walkObjects(s.formScroll.Content, func(o fyne.CanvasObject) {
		e := entryOf(o)
		if e == nil || e.PlaceHolder == "" || e.MultiLine {
			return
		}
		room := e.Size().Width - 2*theme.InnerPadding()
		if e.ActionItem != nil {
			room -= e.ActionItem.Size().Width
		}
		text := fyne.MeasureText(e.PlaceHolder, theme.TextSize(), e.TextStyle).Width
		assert.LessOrEqual(t, text, room, "the hint %q is cut off", e.PlaceHolder)
		seen++
	})
	assert.GreaterOrEqual(t, seen, 10, "the form's hints were measured")
}

// shownSpan is the part of an entry's text that is in view, as x offsets
// into the text.
func shownSpan(t *testing.T, w fyne.Widget) (from, to float32) {
	t.Helper()
	for _, o := range test.WidgetRenderer(w).Objects() {
		if _, ok := o.(fyne.Scrollable); !ok {
			continue
		}
		off := reflect.ValueOf(o).Elem().FieldByName("Offset").Interface().(fyne.Position)
		return off.X, off.X + o.Size().Width
	}
	t.Fatal("the entry has no scroller")
	return 0, 0
}

func TestPathFieldsShowTheFileName(t *testing.T) {
	s := layoutStudio(t, 1024, 700)
	f := s.form
	long := filepath.Join(strings.Repeat("/a-long-folder-name", 6), "photo-of-the-harbour.png")
	f.img2img.initImage.SetText(long)
	f.vae.vae.SetText(filepath.Join(strings.Repeat("/models", 10), "sdxl-vae-fp16-fix.safetensors"))
	test.Tap(f.controlNet.add)
	f.controlNet.rows[0].image.SetText(long)
	s.win.Resize(fyne.NewSize(1024, 700))
	for _, w := range []fyne.Widget{f.img2img.initImage, f.vae.vae, f.controlNet.rows[0].image} {
		e := entryOf(w)
		full := fyne.MeasureText(e.Text, theme.TextSize(), e.TextStyle).Width
		base := fyne.MeasureText(filepath.Base(e.Text), theme.TextSize(), e.TextStyle).Width
		require.Greater(t, full, e.Size().Width, "the path is longer than its field")
		from, to := shownSpan(t, w)
		assert.LessOrEqual(t, from, full-base, "%s: the file name is in view", filepath.Base(e.Text))
		assert.GreaterOrEqual(t, to, full, "%s: the file name is in view to its end", filepath.Base(e.Text))
	}
	// Typing in the field leaves the cursor where the user puts it.
	e := f.img2img.initImage
	s.win.Canvas().Focus(e)
	e.CursorColumn = 3
	test.Type(e, "x")
	assert.Equal(t, 4, e.CursorColumn)
}

// A section header has its own chevron, not the ▼ of the drop-downs.
func TestSectionHeadersAreNotDropDowns(t *testing.T) {
	s := layoutStudio(t, 1320, 860)
	f := s.form
	f.accordion.Close(1)
	var headers []*widget.Button
	for _, o := range test.WidgetRenderer(f.accordion).Objects() {
		if b, ok := o.(*widget.Button); ok && b.Visible() {
			headers = append(headers, b)
		}
	}
	require.Len(t, headers, len(foldedTitles))
	dropDown := theme.Icon(theme.IconNameArrowDropDown).Name()
	assert.Equal(t, chevronDownIcon.Name(), headers[0].Icon.Name(), "an open section")
	assert.Equal(t, chevronRightIcon.Name(), headers[1].Icon.Name(), "a closed section")
	for _, h := range headers {
		assert.NotEqual(t, dropDown, h.Icon.Name(), h.Text)
	}
	// The drop-downs inside a section keep theirs.
	sel := f.sampling.scheduler
	found := false
	walkObjects(sel, func(o fyne.CanvasObject) {
		if ic, ok := o.(*widget.Icon); ok && ic.Resource != nil && ic.Resource.Name() == dropDown {
			found = true
		}
	})
	assert.True(t, found, "the Sampler drop-down still shows ▼")
}

func TestGalleryDetailGroupsItsActions(t *testing.T) {
	s, st, _ := servicesStudio(t, nil, nil)
	rec := recordImage(t, st, t.TempDir(), "a lighthouse", "tiny", 1)
	s.x.tabs.SelectIndex(tabGallery)
	g := s.x.gallery
	g.openDetail(rec.ID)
	v := g.detail
	var names []string
	for _, it := range v.moreItems() {
		names = append(names, it.Label)
	}
	assert.Equal(t, []string{"Export…", "Open folder"}, names, "the rarer actions are in More")
	d := fyne.CurrentApp().Driver()
	top := func(o fyne.CanvasObject) float32 { return d.AbsolutePositionForObject(o).Y }
	assert.Equal(t, top(v.toInit), top(v.up), "init image and upscale share a row")
	assert.Greater(t, top(v.toInit), top(v.use))
	assert.Greater(t, top(v.del), top(v.more)+v.more.Size().Height, "Delete is apart, below the rest")
	assert.Less(t, v.del.Size().Width, v.use.Size().Width/2, "and not a full-width button")
	// Delete asks first; Cancel keeps the image.
	test.Tap(v.del)
	require.NotNil(t, v.ask)
	v.ask.Dismiss()
	_, err := st.GetImage(context.Background(), rec.ID)
	assert.NoError(t, err, "nothing is deleted without the answer")
}

// The init image and the mask show beside their paths.
func TestInitImageAndMaskShowTheirPictures(t *testing.T) {
	s := layoutStudio(t, 1320, 860)
	f := s.form
	dir := t.TempDir()
	initPath := writePNG(t, dir, "photo.png", 96, 64, color.NRGBA{R: 200, G: 120, B: 40, A: 255})
	maskPath := writePNG(t, dir, "mask.png", 96, 64, color.White)
	entryX := f.img2img.initImage.Position().X
	f.img2img.initImage.SetText(initPath)
	f.img2img.mask.SetText(maskPath)
	s.waitFor(t, time.Minute, "the two pictures", func() bool {
		return f.img2img.initThumb.shown() && f.img2img.maskThumb.shown()
	})
	assert.Equal(t, 72, f.img2img.initThumb.img.Image.Bounds().Dx(), "shrunk to the thumbnail")
	assert.Greater(t, f.img2img.initImage.Position().X, entryX, "the picture stands left of the field")
	assert.Equal(t, f.img2img.initThumb.box.Size().Height, f.img2img.initImage.Size().Height, "as tall as the field")

	f.img2img.mask.SetText(filepath.Join(dir, "missing.png"))
	s.waitFor(t, time.Minute, "the mask's picture to go", func() bool { return !f.img2img.maskThumb.shown() })
	f.img2img.initImage.SetText("")
	assert.False(t, f.img2img.initThumb.shown(), "no path, no picture")
	assert.Equal(t, entryX, f.img2img.initImage.Position().X, "the field takes its room back")
}

// With the downloader, "worker ready" on the demo model points at Get models…
// and fits the status's two lines at 1024 × 700.
func TestWorkerReadyHintFitsTheSmallWindow(t *testing.T) {
	s, _, _ := downloadStudio(t, "http://127.0.0.1:9", new(atomic.Int32))
	s.win.Resize(fyne.NewSize(1024, 700))
	s.waitFor(t, time.Minute, "the model library", func() bool { return s.form.lib != nil })
	if s.getModels != nil && s.getModels.pop != nil {
		s.getModels.pop.Hide()
	}
	s.WarmUp(func(context.Context) error { return nil }) // the start itself is the bridge's, tested with it
	s.waitFor(t, time.Minute, "the start's end", func() bool { return s.warm.done })
	text := s.status.text
	assert.Contains(t, text.Text, "Get models…")
	line := fyne.MeasureText("Mg", theme.TextSize(), fyne.TextStyle{}).Height
	assert.LessOrEqual(t, text.MinSize().Height, 2*line+2*theme.InnerPadding()+4, "two lines at most: %q", text.Text)
}

package ui

import (
	"image/color"
	"testing"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/store"
)

// viewerWith is a studio whose Recent strip holds n images of w × h, the
// newest shown.
func viewerWith(t *testing.T, n, w, h int) (testStudio, []store.ImageRecord) {
	t.Helper()
	hist := &memHistory{}
	dir := t.TempDir()
	for i := range n {
		p := writePNG(t, dir, "img-"+string(rune('a'+i))+".png", w, h, color.NRGBA{R: uint8(40 * i), G: 90, B: 140, A: 255})
		hist.add(store.ImageRecord{ID: int64(i + 1), Path: p, Seed: int64(100 + i), Width: w, Height: h, Prompt: "a lighthouse"})
	}
	s := newTestStudio(t, &fakeGen{}, hist)
	s.win.Resize(fyne.NewSize(1320, 860))
	s.waitFor(t, time.Minute, "the history", func() bool { return s.historyLoaded() && s.view.shown != nil })
	return s, hist.recs
}

func TestViewerZoomsToOneToOneAndPans(t *testing.T) {
	s, _ := viewerWith(t, 1, 2048, 1536)
	z := s.view.zoom
	stage := z.scroll.Size()
	require.Greater(t, stage.Width, float32(200))
	fit := z.shownZoom()
	assert.Less(t, fit, float32(1), "a 2048 px image is fitted, smaller than 1:1")
	assert.Contains(t, z.label.Text, "Fit")

	// 1:1: one image pixel to a screen pixel, the picture larger than the stage.
	test.Tap(z.actual)
	assert.Equal(t, float32(1), z.zoom)
	assert.Equal(t, fyne.NewSize(2048, 1536), z.img.Size(), "the picture at its pixel size")
	assert.Equal(t, "100%", z.label.Text)
	assert.Equal(t, "Fit", z.actual.Text)

	// A drag pans.
	before := z.scroll.Offset
	test.Drag(s.win.Canvas(), fyne.NewPos(600, 300), -120, -80)
	assert.Equal(t, before.X+120, z.scroll.Offset.X, "dragged left: the picture's right comes into view")
	assert.Equal(t, before.Y+80, z.scroll.Offset.Y)

	// The wheel zooms in around the pointer, and out.
	test.Scroll(s.win.Canvas(), fyne.NewPos(600, 300), 0, 10)
	assert.InDelta(t, zoomStep, z.zoom, 1e-4)
	assert.Greater(t, z.img.Size().Width, float32(2048))
	test.Scroll(s.win.Canvas(), fyne.NewPos(600, 300), 0, -10)
	test.Scroll(s.win.Canvas(), fyne.NewPos(600, 300), 0, -10)
	assert.InDelta(t, 1/zoomStep, z.zoom, 1e-4)

	// The zoomed picture, larger than its stage, takes no click meant for
	// what lies around the stage: Reuse seed, under it, still works.
	s.form.seed.seed.SetText("-1")
	d := fyne.CurrentApp().Driver()
	at := d.AbsolutePositionForObject(s.view.reuseSeed).Add(fyne.NewPos(10, 10))
	test.TapCanvas(s.win.Canvas(), at)
	assert.Equal(t, "100", s.form.seed.seed.Text, "the tap reached Reuse seed")

	// Fit again: the picture follows the stage.
	test.Tap(z.actual)
	assert.Zero(t, z.zoom)
	assert.Equal(t, stage, z.img.Size())
	assert.Equal(t, fyne.NewPos(0, 0), z.scroll.Offset)
}

func TestViewerZoomKeysAndButtons(t *testing.T) {
	s, _ := viewerWith(t, 1, 640, 480)
	z := s.view.zoom
	c := s.win.Canvas()
	test.Tap(z.in)
	first := z.zoom
	assert.Greater(t, first, z.fitZoom())
	test.Tap(z.out)
	assert.Zero(t, z.zoom, "one step in and one out is the fitted picture again")
	c.Unfocus()
	s.TypedKey(&fyne.KeyEvent{Name: fyne.Key1})
	assert.Equal(t, float32(1), z.zoom)
	assert.Equal(t, fyne.NewSize(640, 480), z.img.MinSize())
	s.TypedKey(&fyne.KeyEvent{Name: fyne.KeyEqual})
	assert.InDelta(t, zoomStep, z.zoom, 1e-4)
	s.TypedKey(&fyne.KeyEvent{Name: fyne.KeyMinus})
	assert.InDelta(t, 1, z.zoom, 1e-4)
	s.TypedKey(&fyne.KeyEvent{Name: fyne.Key0})
	assert.Zero(t, z.zoom)
}

func TestArrowKeysStepThroughTheRecentResults(t *testing.T) {
	s, recs := viewerWith(t, 3, 64, 64)
	require.Equal(t, recs[0].Path, s.view.shown.Path, "the newest is shown")
	s.TypedKey(&fyne.KeyEvent{Name: fyne.KeyRight})
	assert.Equal(t, recs[1].Path, s.view.shown.Path, "→: the next older")
	assert.Equal(t, recs[1].Path, s.strip.selected, "the strip's ring follows")
	s.TypedKey(&fyne.KeyEvent{Name: fyne.KeyRight})
	s.TypedKey(&fyne.KeyEvent{Name: fyne.KeyRight})
	assert.Equal(t, recs[2].Path, s.view.shown.Path, "stops at the oldest")
	s.TypedKey(&fyne.KeyEvent{Name: fyne.KeyLeft})
	assert.Equal(t, recs[1].Path, s.view.shown.Path, "←: back to the newer")
	// A zoom holds while stepping through images of one size.
	s.TypedKey(&fyne.KeyEvent{Name: fyne.Key1})
	s.TypedKey(&fyne.KeyEvent{Name: fyne.KeyLeft})
	assert.Equal(t, float32(1), s.view.zoom.zoom)
}

func TestArrowKeysMoveThroughTheGallery(t *testing.T) {
	s, st, _ := servicesStudio(t, nil, nil)
	dir := t.TempDir()
	var recs []store.ImageRecord
	for i := range 5 {
		recs = append([]store.ImageRecord{recordImage(t, st, dir, "a lighthouse", "tiny", int64(i+1))}, recs...)
	}
	s.x.tabs.SelectIndex(tabGallery)
	g := s.x.gallery
	s.q.drain()
	require.Equal(t, 5, g.count)
	cols := g.grid.ColumnCount()
	require.Greater(t, cols, 1)
	key := func(n fyne.KeyName) { s.TypedKey(&fyne.KeyEvent{Name: n}); s.q.drain() }

	key(fyne.KeyRight)
	assert.Equal(t, 0, g.cursor, "the first key starts at the first image")
	assert.True(t, s.tile(t, recs[0].Path).cursorOn(), "its tile is ringed")
	key(fyne.KeyRight)
	assert.Equal(t, 1, g.cursor)
	assert.True(t, s.tile(t, recs[1].Path).cursorOn())
	assert.False(t, s.tile(t, recs[0].Path).cursorOn(), "the ring moves")
	key(fyne.KeyDown)
	assert.Equal(t, min(1+cols, 4), g.cursor, "↓: a row down")
	key(fyne.KeyHome)
	assert.Equal(t, 0, g.cursor)
	key(fyne.KeyRight)

	key(fyne.KeyReturn)
	require.True(t, g.detail.box.Visible(), "Enter opens the image")
	assert.Equal(t, recs[1].ID, g.detail.d.ID)
	key(fyne.KeyRight)
	assert.Equal(t, recs[2].ID, g.detail.d.ID, "→ in the detail: the next image")
	key(fyne.KeyLeft)
	key(fyne.KeyLeft)
	assert.Equal(t, recs[0].ID, g.detail.d.ID)
	key(fyne.KeyLeft)
	assert.Equal(t, recs[0].ID, g.detail.d.ID, "stops at the first")
	key(fyne.KeyEscape)
	assert.False(t, g.detail.box.Visible(), "Esc goes back to the grid")
	assert.Equal(t, 0, g.cursor, "on the image last shown")
}

// A thumbnail says what it is under the pointer: the prompt's start, size, seed.
func TestThumbnailsShowTheirDetailsOnHover(t *testing.T) {
	s, recs := viewerWith(t, 2, 64, 48)
	c := s.win.Canvas()
	l := tipLayers[c]
	require.NotNil(t, l)
	tile := s.strip.tiles[1]
	test.MoveMouse(c, absPos(tile).Add(fyne.NewPos(20, 20)))
	assert.Equal(t, "a lighthouse · 64 × 48 · seed 100", l.shown)
	assert.True(t, l.tip.Visible())
	assert.Equal(t, recs[1].Seed, int64(100))
	test.MoveMouse(c, fyne.NewPos(5, 5))
	assert.False(t, l.tip.Visible(), "the caption goes with the pointer")

	long := store.ImageRecord{Prompt: "a lighthouse on a cliff at dusk, volumetric light, highly detailed, 8k", Width: 1024, Height: 1024, Seed: 7}
	assert.Equal(t, "a lighthouse on a cliff at dusk, volumetric lig… · 1024 × 1024 · seed 7", thumbCaption(long))
}

// At 1024 × 700 the result's info has the viewer's width, the actions a row below.
func TestResultInfoIsNotSqueezedByTheActions(t *testing.T) {
	s, _ := viewerWith(t, 1, 64, 64)
	s.win.Resize(fyne.NewSize(1024, 700))
	v := s.view
	s.view.info.SetText("seed 1846813564 · 512 × 512 · tiny demo model · 5.0 s · 2.30 it/s · cpu float32")
	d := fyne.CurrentApp().Driver()
	assert.GreaterOrEqual(t, v.info.Size().Width, v.zoom.scroll.Size().Width-20, "as wide as the picture")
	assert.Greater(t, d.AbsolutePositionForObject(v.reuseSeed).Y, d.AbsolutePositionForObject(v.info).Y+v.info.Size().Height-1,
		"the actions are under the info")
	lines := v.info.MinSize().Height / fyne.MeasureText("seed", 14, fyne.TextStyle{}).Height
	assert.Less(t, lines, float32(2.5), "the info takes a line or two, not a word a line")
}

package ui

import (
	"fyne.io/fyne/v2"
)

// TypedKey is what a key does when no field has the keyboard: Esc (Escape);
// in the studio, ←/→ step through the recent results and +, −, 1 and 0 zoom
// the viewer (in, out, 1:1, fit); in the gallery, the arrows move through the
// grid and Enter opens the image, or step from image to image in its detail view.
func (s *Studio) TypedKey(k *fyne.KeyEvent) {
	if k.Name == fyne.KeyEscape {
		s.Escape()
		return
	}
	switch s.tab() {
	case tabGallery:
		s.x.gallery.typedKey(k)
	case tabStudio:
		s.studioKey(k)
	}
}

// tab is the tab shown; the studio alone has none but the studio's.
func (s *Studio) tab() int {
	if s.x == nil || s.x.tabs == nil {
		return tabStudio
	}
	return s.x.tabs.SelectedIndex()
}

func (s *Studio) studioKey(k *fyne.KeyEvent) {
	z := s.view.zoom
	switch k.Name {
	case fyne.KeyLeft, fyne.KeyUp:
		s.stepResult(-1)
	case fyne.KeyRight, fyne.KeyDown:
		s.stepResult(1)
	case fyne.KeyEqual, fyne.KeyPlus:
		z.zoomBy(zoomStep, z.center())
	case fyne.KeyMinus:
		z.zoomBy(1/zoomStep, z.center())
	case fyne.Key1:
		if z.zoom != 1 {
			z.setZoom(1, z.center(), z.shownZoom())
		}
	case fyne.Key0:
		if z.zoom != 0 {
			z.setZoom(0, z.center(), z.shownZoom())
		}
	}
}

// stepResult shows the next result of the Recent strip (d = 1: older, to
// the right) or the previous one (d = -1: newer), and keeps its tile in view.
func (s *Studio) stepResult(d int) {
	st := s.strip
	if len(st.items) == 0 {
		return
	}
	i := -1
	for k, rec := range st.items {
		if rec.Path == st.selected {
			i = k
			break
		}
	}
	next := min(max(i+d, 0), len(st.items)-1)
	if i < 0 {
		next = 0
	}
	if next == i {
		return
	}
	s.showRecord(st.items[next])
	st.reveal(next)
}

// reveal scrolls the strip so that tile i is in view.
func (st *recentStrip) reveal(i int) {
	if i < 0 || i >= len(st.tiles) {
		return
	}
	t := st.tiles[i]
	x, w := t.Position().X, t.Size().Width
	off, view := st.scroll.Offset.X, st.scroll.Size().Width
	switch {
	case x < off:
		off = x
	case x+w > off+view:
		off = x + w - view
	default:
		return
	}
	st.scroll.ScrollToOffset(fyne.NewPos(off, 0))
}

// typedKey moves the gallery's cursor through the grid, or through the
// images from the detail view.
func (g *galleryView) typedKey(k *fyne.KeyEvent) {
	if g.detail.box.Visible() {
		switch k.Name {
		case fyne.KeyLeft, fyne.KeyUp:
			g.stepDetail(-1)
		case fyne.KeyRight, fyne.KeyDown:
			g.stepDetail(1)
		}
		return
	}
	cols := max(g.grid.ColumnCount(), 1)
	switch k.Name {
	case fyne.KeyLeft:
		g.moveCursor(-1)
	case fyne.KeyRight:
		g.moveCursor(1)
	case fyne.KeyUp:
		g.moveCursor(-cols)
	case fyne.KeyDown:
		g.moveCursor(cols)
	case fyne.KeyHome:
		g.setCursor(0)
	case fyne.KeyEnd:
		g.setCursor(g.count - 1)
	case fyne.KeyReturn, fyne.KeyEnter, fyne.KeySpace:
		if rec, ok := g.record(g.cursor); ok && g.cursor >= 0 {
			g.tapped(rec)
		}
	}
}

// moveCursor moves the cursor by d tiles; from none, any key starts at the first.
func (g *galleryView) moveCursor(d int) {
	if g.cursor < 0 {
		g.setCursor(0)
		return
	}
	g.setCursor(min(max(g.cursor+d, 0), g.count-1))
}

// setCursor puts the cursor on tile i, scrolled into view, and rings it.
func (g *galleryView) setCursor(i int) {
	if g.count == 0 || i < 0 {
		return
	}
	old := g.cursor
	g.cursor = i
	g.grid.ScrollTo(i)
	if old >= 0 && old != i {
		g.grid.RefreshItem(old)
	}
	g.grid.RefreshItem(i)
}

// stepDetail opens the next (d = 1) or previous (d = -1) image of the grid
// in the detail view; the grid's cursor follows, for the way back.
func (g *galleryView) stepDetail(d int) {
	next := g.cursor + d
	if next < 0 || next >= g.count {
		return
	}
	rec, ok := g.record(next)
	if !ok {
		return
	}
	g.setCursor(next)
	g.openDetail(rec.ID)
}

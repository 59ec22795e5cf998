package ui

import (
	"fmt"
	"image"
	"image/color"
	"os"
	"strings"
	"sync"

	"atelier/core/store"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/canvas"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/driver/desktop"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"
	"github.com/disintegration/imaging"
)

const (
	// stripLimit bounds the strip; the full history belongs to the gallery.
	stripLimit = 40
	thumbSize  = 88
	// thumbPixels is the decoded thumbnail edge: twice the tile, for HiDPI.
	thumbPixels = 2 * thumbSize
)

// recentStrip is the row of recent images under the viewer. Its tiles are a
// pool reused across refreshes, so a refresh after each job rebuilds nothing
// and thumbnails already decoded stay on screen. UI goroutine only.
type recentStrip struct {
	items    []store.ImageRecord
	tiles    []*thumbTile
	row      *fyne.Container
	scroll   *container.Scroll
	empty    *widget.Label
	selected string // path of the highlighted tile
	onTap    func(store.ImageRecord)
	thumbs   *thumbCache
}

func newRecentStrip(thumbs *thumbCache, onTap func(store.ImageRecord)) *recentStrip {
	s := &recentStrip{thumbs: thumbs, onTap: onTap, row: container.NewHBox()}
	s.scroll = container.NewHScroll(s.row)
	s.empty = widget.NewLabel("Your images will collect here.")
	s.empty.Importance = widget.LowImportance
	return s
}

func (s *recentStrip) content() fyne.CanvasObject {
	// The scroller's own min height is tiny; the strut keeps a tile row's height.
	strut := canvas.NewRectangle(color.Transparent)
	strut.SetMinSize(fyne.NewSize(0, thumbSize+theme.Padding()*2))
	return container.NewStack(strut, container.NewPadded(s.empty), s.scroll)
}

// set shows records, newest first, and returns the paths with no thumbnail yet.
func (s *recentStrip) set(items []store.ImageRecord) []string {
	if len(items) > stripLimit {
		items = items[:stripLimit]
	}
	s.items = items
	for len(s.tiles) < len(items) {
		t := newThumbTile()
		idx := len(s.tiles)
		t.onTap = func() {
			if idx < len(s.items) && s.onTap != nil {
				s.onTap(s.items[idx])
			}
		}
		s.tiles = append(s.tiles, t)
	}
	objs := make([]fyne.CanvasObject, len(items))
	var missing []string
	for i, rec := range items {
		t := s.tiles[i]
		img, ok := s.thumbs.get(rec.Path)
		if !ok {
			missing = append(missing, rec.Path)
		}
		t.rec = rec
		t.show(img, ok, rec.Path == s.selected)
		objs[i] = t
	}
	s.row.Objects = objs
	s.row.Refresh()
	s.empty.Hidden = len(items) > 0
	s.empty.Refresh()
	return missing
}

// thumbReady shows a thumbnail decoded in the background on every tile of that path.
func (s *recentStrip) thumbReady(path string) {
	img, ok := s.thumbs.get(path)
	for i, rec := range s.items {
		if rec.Path == path {
			s.tiles[i].show(img, ok, path == s.selected)
		}
	}
}

func (s *recentStrip) selectPath(path string) {
	s.selected = path
	for i, rec := range s.items {
		s.tiles[i].setSelected(rec.Path == path)
	}
}

// thumbTile is one tappable thumbnail with a selection ring.
type thumbTile struct {
	widget.BaseWidget
	tileFace
	hoverTip
	onTap func()
	rec   store.ImageRecord
}

func newThumbTile() *thumbTile {
	t := &thumbTile{tileFace: newTileFace(2)}
	t.hoverTip = hoverTip{anchor: t, caption: func() string { return thumbCaption(t.rec) }}
	t.ExtendBaseWidget(t)
	return t
}

// tileFace is a thumbnail's picture, background and selection ring, shared
// by the recent strip and the gallery grid.
type tileFace struct {
	img  *canvas.Image
	bg   *canvas.Rectangle
	ring *canvas.Rectangle
}

func newTileFace(ringWidth float32) tileFace {
	f := tileFace{img: &canvas.Image{FillMode: canvas.ImageFillContain, ScaleMode: canvas.ImageScaleSmooth}}
	f.bg = canvas.NewRectangle(canvasBg)
	f.bg.CornerRadius = 6
	f.ring = canvas.NewRectangle(color.Transparent)
	f.ring.StrokeWidth = ringWidth
	f.ring.CornerRadius = 6
	return f
}

func (t *thumbTile) CreateRenderer() fyne.WidgetRenderer {
	return widget.NewSimpleRenderer(container.NewStack(t.bg, container.NewPadded(t.img), t.ring))
}

func (t *thumbTile) MinSize() fyne.Size { return fyne.NewSquareSize(thumbSize) }

// Tapped implements fyne.Tappable.
func (t *thumbTile) Tapped(*fyne.PointEvent) {
	t.MouseOut()
	if t.onTap != nil {
		t.onTap()
	}
}

// show sets the tile's picture: the thumbnail, a placeholder while it loads,
// or a broken-image icon when the file is gone.
func (t *tileFace) show(img image.Image, loaded, selected bool) {
	switch {
	case loaded && img != nil:
		t.img.Resource, t.img.Image = nil, img
	case loaded:
		t.img.Image, t.img.Resource = nil, theme.BrokenImageIcon()
	default:
		t.img.Image, t.img.Resource = nil, theme.FileImageIcon()
	}
	t.img.Refresh()
	t.setSelected(selected)
}

func (t *tileFace) setSelected(on bool) {
	if on {
		t.ring.StrokeColor = accent
	} else {
		t.ring.StrokeColor = color.Transparent
	}
	t.ring.Refresh()
}

// thumbCache keeps decoded thumbnails by path; a nil image records a file that
// could not be read, so it is not retried on every refresh. Safe for concurrent use.
type thumbCache struct {
	mu sync.Mutex
	m  map[string]image.Image
}

func newThumbCache() *thumbCache { return &thumbCache{m: map[string]image.Image{}} }

func (c *thumbCache) get(path string) (image.Image, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	img, ok := c.m[path]
	return img, ok
}

// load decodes and shrinks one image; it runs off the UI goroutine.
func (c *thumbCache) load(path string) {
	var thumb image.Image
	if f, err := os.Open(path); err == nil {
		if img, _, err := image.Decode(f); err == nil {
			thumb = imaging.Fit(img, thumbPixels, thumbPixels, imaging.Linear)
		}
		f.Close()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// The strip shows at most stripLimit images; dropping the whole cache now and
	// then is simpler than LRU bookkeeping and costs a few re-decodes.
	if len(c.m) > 4*stripLimit {
		c.m = map[string]image.Image{}
	}
	c.m[path] = thumb
}

// thumbCaption is what a thumbnail says under the pointer: the prompt's
// start, the size and the seed, as the tiles show only the picture.
func thumbCaption(rec store.ImageRecord) string {
	p := []rune(strings.Join(strings.Fields(rec.Prompt), " "))
	if len(p) > 48 {
		p = append(p[:47], '…')
	}
	parts := []string{}
	if len(p) > 0 {
		parts = append(parts, string(p))
	}
	if rec.Width > 0 && rec.Height > 0 {
		parts = append(parts, fmt.Sprintf("%d × %d", rec.Width, rec.Height))
	}
	parts = append(parts, fmt.Sprintf("seed %d", rec.Seed))
	return strings.Join(parts, " · ")
}

// hoverTip shows a tile's caption while the pointer is over it.
type hoverTip struct {
	caption func() string
	anchor  fyne.CanvasObject
}

// MouseIn implements desktop.Hoverable.
func (h *hoverTip) MouseIn(*desktop.MouseEvent) {
	if l := tipLayerOf(h.anchor); l != nil {
		l.show(h.caption(), h.anchor)
	}
}

// MouseMoved implements desktop.Hoverable.
func (h *hoverTip) MouseMoved(*desktop.MouseEvent) {}

// MouseOut implements desktop.Hoverable.
func (h *hoverTip) MouseOut() {
	if l := tipLayerOf(h.anchor); l != nil {
		l.hide()
	}
}

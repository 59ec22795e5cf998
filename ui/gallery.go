package ui

import (
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"strconv"
	"strings"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/layout"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core/media"
	"atelier/core/store"
)

const (
	galleryPage     = 240 // records fetched at a time
	galleryTileSize = 168 // tile edge in points
	galleryThumbPx  = 192 // thumbnail edge in pixels: sharp on a 168-point tile, small in memory
	galleryThumbMem = 300 // decoded thumbnails kept in memory (a few screens)
	galleryMaxPages = 24  // pages kept in memory; others are fetched again
)

// galleryView is the Gallery tab: a virtualized grid over the whole history
// (only the visible tiles exist), with search and filters, and the detail
// view of one image. UI goroutine only, except the thumbnail loader.
type galleryView struct {
	s      *Studio
	q      store.GalleryQuery
	count  int
	pages  map[int][]store.ImageRecord
	order  []int // pages by age, for dropping old ones
	stale  bool  // the history changed since the last query
	opened bool

	search     *widget.Entry
	model      *widget.Select
	seed       *widget.Entry
	from, to   *widget.Entry
	starred    *widget.Check
	session    *widget.Select
	sessionIDs map[string]int64
	countLabel *widget.Label
	notice     *widget.Label // over the grid: why it is empty
	selecting  *widget.Check
	export     *widget.Button
	selected   map[int64]bool
	cursor     int // the tile the arrow keys are on, or -1

	grid     *widget.GridWrap
	tiles    map[string]*galleryTile // tile showing each path now
	thumbs   *thumbLoader
	gridPane fyne.CanvasObject
	detail   *detailView
}

func newGalleryView(s *Studio) *galleryView {
	g := &galleryView{s: s, pages: map[int][]store.ImageRecord{}, selected: map[int64]bool{}, cursor: -1,
		tiles: map[string]*galleryTile{}, sessionIDs: map[string]int64{}}
	th := s.x.svc.Thumbs
	if th == nil {
		th = media.NewThumbnailer(s.x.svc.Paths.Cache, galleryThumbPx)
		s.x.svc.Thumbs = th
	}
	g.thumbs = newThumbLoader(th, galleryThumbMem, func(path string) { s.do(func() { g.thumbReady(path) }) })

	g.search = widget.NewEntry()
	g.search.SetPlaceHolder("Search prompts…")
	g.search.OnChanged = func(string) { g.apply() }
	g.model = widget.NewSelect([]string{allModels}, func(string) { g.apply() })
	g.model.SetSelected(allModels)
	g.seed = widget.NewEntry()
	g.seed.SetPlaceHolder("seed")
	g.seed.OnChanged = func(string) { g.apply() }
	g.from = widget.NewEntry()
	g.from.SetPlaceHolder("from YYYY-MM-DD")
	g.from.OnChanged = func(string) { g.apply() }
	g.to = widget.NewEntry()
	g.to.SetPlaceHolder("to YYYY-MM-DD")
	g.to.OnChanged = func(string) { g.apply() }
	g.starred = widget.NewCheck("Starred", func(bool) { g.apply() })
	g.session = widget.NewSelect([]string{allSessions}, func(string) { g.apply() })
	g.session.SetSelected(allSessions)
	g.countLabel = widget.NewLabel("")
	g.notice = widget.NewLabel("")
	g.notice.Alignment = fyne.TextAlignCenter
	g.notice.Wrapping = fyne.TextWrapWord
	g.notice.Hide()
	for _, e := range []*widget.Entry{g.seed, g.from, g.to} {
		e.AlwaysShowValidationError = true // marked while the pointer is elsewhere
	}
	g.selecting = widget.NewCheck("Select", func(on bool) {
		if !on {
			g.selected = map[int64]bool{}
			g.grid.Refresh()
		}
		g.updateExport()
	})
	g.export = widget.NewButtonWithIcon("Export…", theme.DocumentSaveIcon(), g.exportSelected)
	g.export.Disable()

	g.grid = widget.NewGridWrap(
		func() int { return g.count },
		func() fyne.CanvasObject { return newGalleryTile(g) },
		func(i widget.GridWrapItemID, o fyne.CanvasObject) { g.bind(i, o.(*galleryTile)) })
	g.detail = newDetailView(g)
	return g
}

const (
	allModels   = "All models"
	allSessions = "All sessions"
)

func (g *galleryView) content() fyne.CanvasObject {
	narrow := func(o fyne.CanvasObject, w float32) fyne.CanvasObject {
		return container.NewGridWrap(fyne.NewSize(w, o.MinSize().Height), o)
	}
	filters := container.NewHBox(narrow(g.model, 180), narrow(g.seed, 110), narrow(g.from, 150), narrow(g.to, 150),
		g.starred, narrow(g.session, 200))
	bar := container.NewBorder(nil, nil, nil, container.NewHBox(g.countLabel, g.selecting, g.export), g.search)
	top := container.NewVBox(container.NewPadded(bar), container.NewPadded(filters), widget.NewSeparator())
	g.gridPane = container.NewBorder(top, nil, nil, nil,
		container.NewStack(g.grid, container.NewCenter(container.NewGridWrap(fyne.NewSize(520, 80), g.notice))))
	d := g.detail.content()
	d.Hide()
	return container.NewStack(g.gridPane, d)
}

// galleryStore is what the Gallery tab and its detail view ask of the history.
type galleryStore interface {
	SearchImages(ctx context.Context, q store.GalleryQuery, offset, limit int) ([]store.ImageRecord, error)
	CountImages(ctx context.Context, q store.GalleryQuery) (int, error)
	GalleryModels(ctx context.Context) ([]string, error)
	Sessions(ctx context.Context) ([]store.Session, error)
	GetImage(ctx context.Context, id int64) (*store.ImageDetail, error)
	SetStarred(ctx context.Context, id int64, starred bool) error
	DeleteImage(ctx context.Context, id int64) (*store.ImageRecord, error)
	GetJob(ctx context.Context, id int64) (*store.JobRecord, error) // the check that an image reproduces
}

func (g *galleryView) store() galleryStore { return g.s.x.svc.Store }

// open shows the tab: the first time, or after new images, it queries again.
func (g *galleryView) open() {
	if !g.opened || g.stale {
		g.opened, g.stale = true, false
		g.loadChoices()
		g.apply()
	}
}

// loadChoices fills the model and session filters.
func (g *galleryView) loadChoices() {
	ctx := context.Background()
	if models, err := g.store().GalleryModels(ctx); err == nil {
		opts := append([]string{allModels}, models...)
		g.model.SetOptions(opts)
	}
	if sessions, err := g.store().Sessions(ctx); err == nil {
		opts := []string{allSessions}
		g.sessionIDs = map[string]int64{}
		for _, x := range sessions {
			label := fmt.Sprintf("#%d %s (%d)", x.ID, x.Name, x.Images)
			g.sessionIDs[label] = x.ID
			opts = append(opts, label)
		}
		g.session.SetOptions(opts)
	}
}

// query reads the filters; a filter that does not parse is reported, with
// its entry.
func (g *galleryView) query() (store.GalleryQuery, string, *widget.Entry) {
	q := store.GalleryQuery{Text: g.search.Text, Starred: g.starred.Checked}
	if m := g.model.Selected; m != "" && m != allModels {
		q.Model = m
	}
	if id, ok := g.sessionIDs[g.session.Selected]; ok {
		q.SessionID = id
	}
	if t := strings.TrimSpace(g.seed.Text); t != "" {
		n, err := strconv.ParseInt(t, 10, 64)
		if err != nil {
			return q, fmt.Sprintf("The seed must be a whole number, got %q", t), g.seed
		}
		q.Seed = &n
	}
	day := func(e *widget.Entry, name string, next bool) (time.Time, string) {
		t := strings.TrimSpace(e.Text)
		if t == "" {
			return time.Time{}, ""
		}
		d, err := time.ParseInLocation("2006-01-02", t, time.Local)
		if err != nil {
			return time.Time{}, fmt.Sprintf("%q must be a real date like 2025-01-31, got %q", name, t)
		}
		if next {
			d = d.AddDate(0, 0, 1) // "to" includes its whole day
		}
		return d, ""
	}
	var msg string
	if q.From, msg = day(g.from, "From", false); msg != "" {
		return q, msg, g.from
	}
	if q.To, msg = day(g.to, "To", true); msg != "" {
		return q, msg, g.to
	}
	return q, "", nil
}

// filtered says whether q narrows the gallery at all.
func filtered(q store.GalleryQuery) bool {
	return strings.TrimSpace(q.Text) != "" || q.Model != "" || q.Seed != nil || !q.From.IsZero() ||
		!q.To.IsZero() || q.Starred || q.SessionID != 0
}

// showNotice says over the grid why it is empty; "" hides it.
func (g *galleryView) showNotice(msg string, importance widget.Importance) {
	g.notice.Importance = importance
	g.notice.SetText(msg)
	g.notice.Show()
	if msg == "" {
		g.notice.Hide()
	}
}

// reload runs the same query again (new images came in), keeping the
// scroll position and the selection.
func (g *galleryView) reload() { g.run(false) }

// apply runs the filters: counts the matches and shows the first page.
func (g *galleryView) apply() { g.run(true) }

func (g *galleryView) run(toTop bool) {
	if g.grid == nil || !g.opened {
		return
	}
	q, bad, field := g.query()
	for _, e := range []*widget.Entry{g.seed, g.from, g.to} {
		if e != field {
			e.SetValidationError(nil)
		}
	}
	if bad != "" {
		// Nothing matches a filter that means nothing: the grid empties
		// rather than keep showing what the filter was meant to narrow.
		field.SetValidationError(errors.New(bad))
		g.countLabel.SetText(bad)
		g.countLabel.Importance = widget.DangerImportance
		g.countLabel.Refresh()
		g.count = 0
		g.pages, g.order = map[int][]store.ImageRecord{}, nil
		g.tiles = map[string]*galleryTile{}
		g.grid.Refresh()
		g.showNotice(bad, widget.DangerImportance)
		return
	}
	g.countLabel.Importance = widget.MediumImportance
	n, err := g.store().CountImages(context.Background(), q)
	if err != nil {
		g.countLabel.SetText("Search failed: " + err.Error())
		return
	}
	g.q, g.count = q, n
	g.pages, g.order = map[int][]store.ImageRecord{}, nil
	g.tiles = map[string]*galleryTile{}
	g.page(0)
	switch {
	case n == 1:
		g.countLabel.SetText("1 image")
	default:
		g.countLabel.SetText(fmt.Sprintf("%d images", n))
	}
	switch {
	case n > 0:
		g.showNotice("", widget.MediumImportance)
	case filtered(q):
		g.showNotice("No images match the search and filters. Clear them to see every image.", widget.MediumImportance)
	default:
		g.showNotice("No images yet: the images you generate in the Studio tab collect here.", widget.MediumImportance)
	}
	if toTop {
		g.cursor = -1 // another set of images
	}
	g.cursor = min(g.cursor, n-1)
	g.grid.Refresh()
	if toTop {
		g.grid.ScrollToTop()
	}
}

// page returns the records of page p, fetching it if needed.
func (g *galleryView) page(p int) []store.ImageRecord {
	if recs, ok := g.pages[p]; ok {
		return recs
	}
	recs, err := g.store().SearchImages(context.Background(), g.q, p*galleryPage, galleryPage)
	if err != nil {
		g.countLabel.SetText("Search failed: " + err.Error())
		return nil
	}
	g.pages[p] = recs
	g.order = append(g.order, p)
	if len(g.order) > galleryMaxPages {
		delete(g.pages, g.order[0])
		g.order = g.order[1:]
	}
	return recs
}

// record returns the i-th image of the current query, if it still exists.
func (g *galleryView) record(i int) (store.ImageRecord, bool) {
	recs := g.page(i / galleryPage)
	if k := i % galleryPage; k < len(recs) {
		return recs[k], true
	}
	return store.ImageRecord{}, false
}

func (g *galleryView) bind(i int, t *galleryTile) {
	t.idx = i
	rec, ok := g.record(i)
	if t.rec.Path != "" && g.tiles[t.rec.Path] == t {
		delete(g.tiles, t.rec.Path)
	}
	if !ok {
		t.rec = store.ImageRecord{}
		t.show(nil, false, false, false)
		return
	}
	t.rec = rec
	g.tiles[rec.Path] = t
	img, loaded := g.thumbs.get(rec.Path)
	if !loaded {
		g.thumbs.request(rec.Path)
	}
	t.show(img, loaded, rec.Starred, g.selected[rec.ID])
}

// cursorRing is the ring of the tile the arrow keys are on: the foreground
// colour, apart from the accent of the tiles selected for export.
var cursorRing = color.NRGBA{R: 0xe6, G: 0xe6, B: 0xea, A: 0xff}

func (g *galleryView) thumbReady(path string) {
	if t := g.tiles[path]; t != nil && t.rec.Path == path {
		img, loaded := g.thumbs.get(path)
		t.show(img, loaded, t.rec.Starred, g.selected[t.rec.ID])
	}
}

// tapped opens an image, or toggles it in select mode.
func (g *galleryView) tapped(rec store.ImageRecord) {
	if rec.ID == 0 {
		return
	}
	if g.selecting.Checked {
		if g.selected[rec.ID] {
			delete(g.selected, rec.ID)
		} else {
			g.selected[rec.ID] = true
		}
		if t := g.tiles[rec.Path]; t != nil {
			t.setSelected(g.selected[rec.ID])
		}
		g.updateExport()
		return
	}
	g.openDetail(rec.ID)
}

func (g *galleryView) openDetail(id int64) {
	if err := g.detail.show(id); err != nil {
		g.s.status.set(statusError, "Could not open the image: "+err.Error(), "")
		return
	}
	g.gridPane.Hide()
	g.detail.box.Show()
}

func (g *galleryView) closeDetail() {
	g.detail.box.Hide()
	g.gridPane.Show()
}

func (g *galleryView) updateExport() {
	n := len(g.selected)
	if n > 0 {
		g.export.SetText(fmt.Sprintf("Export %d…", n))
		g.export.Enable()
	} else {
		g.export.SetText("Export…")
		g.export.Disable()
	}
}

func (g *galleryView) selectedIDs() []int64 {
	ids := make([]int64, 0, len(g.selected))
	for id := range g.selected {
		ids = append(ids, id)
	}
	return ids
}

func (g *galleryView) exportSelected() { g.exportIDs(g.selectedIDs()) }

// exportIDs asks for a folder (the native dialog blocks, so off the UI
// goroutine) and copies the images there with their metadata.
func (g *galleryView) exportIDs(ids []int64) {
	svc := g.s.x.svc
	if len(ids) == 0 || svc.ExportImages == nil {
		return
	}
	go func() {
		dir, err := svc.ChooseFolder("Export images to")
		if err != nil || dir == "" {
			return // cancelled
		}
		files, err := svc.ExportImages(context.Background(), ids, dir)
		g.s.do(func() {
			if err != nil {
				g.s.status.set(statusError, fmt.Sprintf("Exported %d of %d images; then: %v", len(files), len(ids), err), "")
				return
			}
			g.s.status.set(statusDone, fmt.Sprintf("Exported %d images with their settings to %s.", len(files), dir), "")
		})
	}()
}

// galleryTile is one thumbnail of the grid.
type galleryTile struct {
	widget.BaseWidget
	tileFace
	hoverTip
	g    *galleryView
	rec  store.ImageRecord
	idx  int // the grid item it shows
	star *widget.Icon
}

func newGalleryTile(g *galleryView) *galleryTile {
	t := &galleryTile{g: g, tileFace: newTileFace(3)}
	t.hoverTip = hoverTip{anchor: t, caption: func() string {
		if t.rec.ID == 0 {
			return ""
		}
		return thumbCaption(t.rec)
	}}
	t.star = widget.NewIcon(theme.NewWarningThemedResource(starIcon))
	t.star.Hide()
	t.ExtendBaseWidget(t)
	return t
}

func (t *galleryTile) CreateRenderer() fyne.WidgetRenderer {
	corner := container.NewVBox(container.NewHBox(layout.NewSpacer(), t.star))
	return widget.NewSimpleRenderer(container.NewStack(t.bg, container.NewPadded(t.img), corner, t.ring))
}

func (t *galleryTile) MinSize() fyne.Size { return fyne.NewSquareSize(galleryTileSize) }

// Tapped implements fyne.Tappable: the arrow keys go on from the tile tapped.
func (t *galleryTile) Tapped(*fyne.PointEvent) {
	t.MouseOut()
	if t.rec.ID != 0 {
		t.g.setCursor(t.idx)
	}
	t.g.tapped(t.rec)
}

func (t *galleryTile) show(img image.Image, loaded, starred, selected bool) {
	t.star.Hidden = !starred
	t.star.Refresh()
	t.tileFace.show(img, loaded, selected)
	if !selected && t.rec.ID != 0 && t.idx == t.g.cursor {
		t.ring.StrokeColor = cursorRing
		t.ring.Refresh()
	}
}

// cursorOn says whether the arrow keys' cursor rings this tile.
func (t *galleryTile) cursorOn() bool { return t.ring.StrokeColor == cursorRing }

// ThumbPixels is the gallery's thumbnail size, for a media.Thumbnailer the
// app makes.
const ThumbPixels = galleryThumbPx

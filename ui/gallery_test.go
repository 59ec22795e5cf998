package ui

import (
	"context"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"fyne.io/fyne/v2/test"
	"fyne.io/fyne/v2/widget"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
)

// recordImage stores a done job with one real PNG and returns the image's record.
func recordImage(t *testing.T, st *store.Store, dir, prompt, model string, seed int64) store.ImageRecord {
	t.Helper()
	ctx := context.Background()
	req := request.DefaultRequest()
	req.Prompt, req.NegativePrompt, req.Model, req.Seed = prompt, "blurry", model, seed
	req.Steps, req.Width, req.Height, req.BatchSize, req.CFG = 6, 64, 64, 1, 4.5
	uid := fmt.Sprintf("job-%d-%d", seed, time.Now().UnixNano())
	id, err := st.CreateJob(ctx, uid, req)
	require.NoError(t, err)
	p := writePNG(t, dir, uid+"-0.png", 64, 64, color.NRGBA{R: uint8(seed * 40), G: 100, B: 150, A: 255})
	require.NoError(t, st.FinishJob(ctx, id, &protocol.Metrics{TotalS: 1.5, DenoiseS: 1, ItS: 6, Device: "cpu", Dtype: "float32"},
		[]protocol.ImageResult{{Path: p, Seed: seed, Width: 64, Height: 64}}))
	imgs, err := st.SearchImages(ctx, store.GalleryQuery{}, 0, 1)
	require.NoError(t, err)
	require.Equal(t, p, imgs[0].Path)
	return imgs[0]
}

// tile returns the gallery tile showing path (the grid must show it).
func (s testStudio) tile(t *testing.T, path string) *galleryTile {
	t.Helper()
	s.q.drain()
	tl := s.x.gallery.tiles[path]
	require.NotNil(t, tl, "no tile shows %s", path)
	return tl
}

func TestGallerySearchDetailAndActions(t *testing.T) {
	s, st, _ := servicesStudio(t, nil, nil)
	ctx := context.Background()
	dir := t.TempDir()
	lighthouse := recordImage(t, st, dir, "a lighthouse at dusk", "tiny", 1)
	fox := recordImage(t, st, dir, "a red fox in the snow", "tiny", 2)
	brittany := recordImage(t, st, dir, "lighthouses of Brittany", "/models/sdxl-base", 3)
	owl := recordImage(t, st, dir, "an owl portrait", "tiny", 4)

	s.x.tabs.SelectIndex(tabGallery)
	g := s.x.gallery
	assert.Equal(t, "4 images", g.countLabel.Text)
	// Every thumbnail made (none is still being written when its image is deleted
	// below), and the owl's tile showing its own.
	s.waitFor(t, time.Minute, "the thumbnails", func() bool {
		for _, r := range []store.ImageRecord{lighthouse, fox, brittany, owl} {
			if img, ok := g.thumbs.get(r.Path); !ok || img == nil {
				return false
			}
		}
		tile := g.tiles[owl.Path]
		return tile != nil && tile.img.Image != nil
	})
	assert.FileExists(t, s.x.svc.Thumbs.Path(owl.Path), "thumbnails are cached on disk")

	// Search as one types: prefix of the last word.
	test.Type(g.search, "lightho")
	assert.Equal(t, "2 images", g.countLabel.Text)
	test.Type(g.search, "use dusk")
	assert.Equal(t, "1 image", g.countLabel.Text)
	g.search.SetText("")
	assert.Equal(t, "4 images", g.countLabel.Text)

	// Filters: model, seed, starred, dates.
	g.model.SetSelected("/models/sdxl-base")
	assert.Equal(t, "1 image", g.countLabel.Text)
	g.model.SetSelected(allModels)
	g.seed.SetText("2")
	assert.Equal(t, "1 image", g.countLabel.Text)
	s.tile(t, fox.Path)
	g.seed.SetText("x")
	assert.Contains(t, g.countLabel.Text, "whole number")
	g.seed.SetText("")
	g.from.SetText(time.Now().Format("2006-01-02"))
	g.to.SetText(time.Now().Format("2006-01-02"))
	assert.Equal(t, "4 images", g.countLabel.Text)
	g.from.SetText(time.Now().AddDate(0, 0, 1).Format("2006-01-02"))
	assert.Equal(t, "0 images", g.countLabel.Text)
	g.from.SetText("")
	g.to.SetText("")

	// Open the detail view by tapping a tile: every parameter shows.
	test.Tap(s.tile(t, lighthouse.Path))
	d := g.detail
	require.NotNil(t, d.d)
	assert.True(t, !g.gridPane.Visible())
	assert.False(t, !d.box.Visible())
	assert.Equal(t, "a lighthouse at dusk", d.title.Text)
	var texts []string
	for _, o := range d.params.Objects {
		if l, ok := o.(*widget.Label); ok {
			texts = append(texts, l.Text)
		}
	}
	joined := strings.Join(texts, "|")
	for _, want := range []string{"blurry", "tiny", "6", "4.5", "64 × 64", "Seed|1", "1.5 s", "6.00 it/s", lighthouse.Path} {
		assert.Contains(t, joined, want)
	}

	// Star it: the store and the filter see it.
	test.Tap(d.star)
	assert.Equal(t, "Unstar", d.star.Text)
	det, err := st.GetImage(ctx, lighthouse.ID)
	require.NoError(t, err)
	assert.True(t, det.Starred)

	// "Use these settings" fills the form and goes to it.
	s.form.prompts.prompt.SetText("something else")
	test.Tap(d.use)
	assert.Equal(t, tabStudio, s.x.tabs.SelectedIndex())
	assert.Equal(t, "a lighthouse at dusk", s.form.prompts.prompt.Text)
	assert.Equal(t, "blurry", s.form.prompts.negative.Text)
	assert.Equal(t, "1", s.form.seed.seed.Text)
	assert.Equal(t, "6", s.form.steps.steps.Text)
	assert.Equal(t, "4.5", s.form.steps.cfg.Text)
	req, verr := s.form.request()
	require.Nil(t, verr)
	assert.Equal(t, det.Request.Prompt, req.Prompt)

	// "Use as init image" also makes the image the start of an img2img job at its size.
	s.form.prompts.prompt.SetText("something else")
	s.form.hires.scale.SetText("2") // does not go with an init image: cleared
	s.x.tabs.SelectIndex(tabGallery)
	test.Tap(d.toInit)
	assert.Equal(t, tabStudio, s.x.tabs.SelectedIndex())
	assert.Equal(t, "a lighthouse at dusk", s.form.prompts.prompt.Text)
	req, verr = s.form.request()
	require.Nil(t, verr, "the form is ready to generate")
	assert.Equal(t, lighthouse.Path, req.InitImage)
	assert.Equal(t, [2]int{64, 64}, [2]int{req.Width, req.Height})
	assert.Equal(t, request.DefaultStrength, req.Strength)
	assert.Zero(t, req.HiresScale)
	assert.Contains(t, s.status.text.Text, filepath.Base(lighthouse.Path)+" is the init image")

	s.x.tabs.SelectIndex(tabGallery)
	test.Tap(d.back)
	assert.False(t, !g.gridPane.Visible())
	g.starred.SetChecked(true)
	assert.Equal(t, "1 image", g.countLabel.Text)
	g.starred.SetChecked(false)

	// Delete asks first; cancelling keeps everything.
	test.Tap(s.tile(t, brittany.Path))
	test.Tap(d.del)
	require.NotNil(t, d.ask)
	d.ask.Dismiss()
	assert.FileExists(t, brittany.Path)
	test.Tap(d.del)
	thumb := s.x.svc.Thumbs.Path(brittany.Path)
	_, err = s.x.svc.Thumbs.Ensure(brittany.Path)
	require.NoError(t, err)
	d.ask.Confirm()
	assert.NoFileExists(t, brittany.Path, "the file goes")
	assert.NoFileExists(t, thumb, "the thumbnail goes")
	_, err = st.GetImage(ctx, brittany.ID)
	assert.ErrorIs(t, err, store.ErrNotFound, "the row goes")
	assert.False(t, !g.gridPane.Visible(), "back to the grid")
	assert.Equal(t, "3 images", g.countLabel.Text)
	assert.Contains(t, s.status.text.Text, "Deleted")

	// Export selected images with their metadata.
	g.selecting.SetChecked(true)
	test.Tap(s.tile(t, fox.Path))
	test.Tap(s.tile(t, owl.Path))
	assert.Equal(t, "Export 2…", g.export.Text)
	assert.True(t, !d.box.Visible(), "in select mode a tap selects instead of opening")
	test.Tap(g.export)
	s.waitFor(t, time.Minute, "the export", func() bool { return strings.Contains(s.status.text.Text, "Exported") })
	dir2, err := s.x.svc.ChooseFolder("")
	require.NoError(t, err)
	for _, rec := range []store.ImageRecord{fox, owl} {
		base := filepath.Base(rec.Path)
		assert.FileExists(t, filepath.Join(dir2, base))
		assert.FileExists(t, filepath.Join(dir2, strings.TrimSuffix(base, ".png")+".json"))
	}
	entries, err := os.ReadDir(dir2)
	require.NoError(t, err)
	assert.Len(t, entries, 4)

	// A new image (a job finished) shows at once while the gallery is open.
	g.selecting.SetChecked(false)
	recordImage(t, st, dir, "a fresh harbor", "tiny", 5)
	s.refreshHistory()
	s.q.drain()
	assert.Equal(t, "4 images", g.countLabel.Text)
	s.tile(t, filepath.Join(dir, filepath.Base(mustNewest(t, st).Path)))
}

func mustNewest(t *testing.T, st *store.Store) store.ImageRecord {
	t.Helper()
	imgs, err := st.SearchImages(context.Background(), store.GalleryQuery{}, 0, 1)
	require.NoError(t, err)
	require.Len(t, imgs, 1)
	return imgs[0]
}

// A filter that does not parse empties the grid and says so over it, in a
// sentence; an impossible date is refused; no match is said, not left blank.
func TestGalleryFilterProblemsAreSaidOverTheGrid(t *testing.T) {
	s, st, _ := servicesStudio(t, nil, nil)
	dir := t.TempDir()
	recordImage(t, st, dir, "a lighthouse at dusk", "tiny", 1)
	recordImage(t, st, dir, "a red fox in the snow", "tiny", 2)
	s.x.tabs.SelectIndex(tabGallery)
	g := s.x.gallery
	assert.Equal(t, "2 images", g.countLabel.Text)
	assert.False(t, g.notice.Visible())

	g.seed.SetText("12a")
	assert.Zero(t, g.count, "the grid does not stay unfiltered")
	assert.True(t, g.notice.Visible())
	assert.Equal(t, `The seed must be a whole number, got "12a"`, g.notice.Text)
	g.seed.SetText("")
	assert.Equal(t, 2, g.count)
	assert.False(t, g.notice.Visible())

	g.from.SetText("2026-13-45")
	assert.Zero(t, g.count)
	assert.Contains(t, g.notice.Text, "real date")
	assert.Contains(t, g.notice.Text, "2026-13-45")
	g.from.SetText("")

	test.Type(g.search, "zebra")
	assert.Equal(t, "0 images", g.countLabel.Text)
	assert.True(t, g.notice.Visible())
	assert.Contains(t, g.notice.Text, "No images match")
}

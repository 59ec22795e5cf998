package ui

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/request"
	"atelier/core/store"
)

// updateMarkup rewrites the golden files of the markup tests from what the
// screens render now (go test ./ui/ -run Markup -update-markup).
var updateMarkup = flag.Bool("update-markup", false, "rewrite ui/testdata/*.xml from the screens as they render now")

// markupStudio is the app's window as a user first sees it: the studio's
// theme, a fixed window size, the queue and gallery tabs, the history loaded.
func markupStudio(t *testing.T) (testStudio, *store.Store) {
	t.Helper()
	s, st, _ := servicesStudio(t, nil, nil)
	s.app.Settings().SetTheme(newStudioTheme())
	s.waitFor(t, 20*time.Second, "the history and the model library", func() bool {
		return s.historyLoaded() && s.form.lib != nil
	})
	return s, st
}

// assertMarkup compares the window with testdata/name. The markup names no
// file of this machine: the screens are filled so that none shows one.
func assertMarkup(t *testing.T, s testStudio, name string) {
	t.Helper()
	s.q.drain()
	c := s.win.Canvas()
	got := test.RenderToMarkup(c)
	for _, dir := range []string{os.TempDir(), t.TempDir()} {
		assert.NotContains(t, got, dir, "the markup names a folder of this machine")
	}
	if home, err := os.UserHomeDir(); err == nil && home != "/" {
		assert.NotContains(t, got, home, "the markup names a folder of this machine")
	}
	if *updateMarkup {
		require.NoError(t, os.WriteFile(filepath.Join("testdata", name), []byte(got), 0o644))
	}
	test.AssertRendersToMarkup(t, name, c)
}

func TestStudioFormMarkup(t *testing.T) {
	s, _ := markupStudio(t)
	assertMarkup(t, s, "studio_form.xml")
}

func TestStudioFormErrorsMarkup(t *testing.T) {
	s, _ := markupStudio(t)
	s.form.prompts.prompt.SetText("")
	s.form.steps.steps.SetText("0")
	s.form.size.width.SetText("63")
	s.Generate()
	require.Contains(t, s.status.text.Text, "Fix the marked fields")
	assertMarkup(t, s, "studio_form_errors.xml")
}

func TestQueueTabMarkup(t *testing.T) {
	s, st := markupStudio(t)
	ctx := context.Background()
	require.NoError(t, st.SetQueuePaused(ctx, true)) // nothing runs: the list stays as it is
	req := firstRunRequest()
	req.Seed = 100
	reqs, err := request.ExpandBatchCount(req, 3)
	require.NoError(t, err)
	reqs[2].Prompt, reqs[2].BatchSize = "a red fox in the snow", 2
	_, err = st.Enqueue(ctx, 0, reqs)
	require.NoError(t, err)
	s.x.tabs.SelectIndex(tabQueue)
	s.q.drain()
	require.Len(t, s.x.queue.jobs, 3)
	assertMarkup(t, s, "queue_tab.xml")
}

func TestGalleryTabMarkup(t *testing.T) {
	s, st := markupStudio(t)
	dir := t.TempDir()
	var recs []store.ImageRecord
	for i, p := range []string{"a lighthouse at dusk", "a red fox in the snow", "an owl portrait"} {
		recs = append(recs, recordImage(t, st, dir, p, request.TinyModel, int64(i+1)))
	}
	s.x.tabs.SelectIndex(tabGallery)
	g := s.x.gallery
	// The thumbnails decode in the background: wait until every tile shows its
	// own rather than the placeholder icon (which Fyne rasterises into Image).
	s.waitFor(t, 20*time.Second, "the thumbnails", func() bool {
		for _, r := range recs {
			tl := g.tiles[r.Path]
			if tl == nil || tl.img.Resource != nil || tl.img.Image == nil {
				return false
			}
		}
		return true
	})
	require.Equal(t, "3 images", g.countLabel.Text)
	assertMarkup(t, s, "gallery_tab.xml")
}

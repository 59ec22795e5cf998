package ui

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"fyne.io/fyne/v2/test"
	"fyne.io/fyne/v2/widget"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/jobs"
	"atelier/core/paths"
	"atelier/core/request"
	"atelier/core/store"
)

// brightenPixel adds 40 to the red channel of one pixel of a PNG (its text
// chunks go: Go's encoder writes none).
func brightenPixel(t *testing.T, path string, x, y int) {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	src, err := png.Decode(bytes.NewReader(b))
	require.NoError(t, err)
	img := image.NewNRGBA(src.Bounds())
	draw.Draw(img, img.Bounds(), src, image.Point{}, draw.Src)
	c := img.NRGBAAt(x, y)
	img.SetNRGBA(x, y, color.NRGBA{R: c.R + 40, G: c.G, B: c.B, A: c.A})
	var out bytes.Buffer
	require.NoError(t, png.Encode(&out, img))
	require.NoError(t, os.WriteFile(path, out.Bytes(), 0o644))
}

func TestRealGalleryDetailChecksThatAnImageReproduces(t *testing.T) {
	br := sharedBridge(t)
	dirs := paths.PathsUnder(t.TempDir())
	require.NoError(t, dirs.EnsureDirs())
	st, err := store.OpenStore(dirs.DB)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	runner := jobs.NewRunner(st, br, dirs)
	s := studioOver(t, st, dirs, eventsOf(runner), nil)

	req := request.DefaultRequest()
	req.Prompt, req.Model, req.Steps, req.Width, req.Height, req.Seed = "a lighthouse", request.TinyModel, 3, 64, 64, 7
	out, err := runner.Run(context.Background(), req, nil)
	require.NoError(t, err)
	path := out.Images[0].Path

	s.x.tabs.SelectIndex(tabGallery)
	test.Tap(s.tile(t, path))
	d := s.x.gallery.detail
	require.NotNil(t, d.d)
	require.False(t, d.check.Disabled(), "the real runner can regenerate, so the check is offered")
	assert.False(t, d.checkNote.Visible(), "no result before a check")

	check := func(what string) {
		t.Helper()
		test.Tap(d.check)
		assert.True(t, d.check.Disabled(), "one check at a time")
		assert.True(t, d.checkBar.Visible(), "the regeneration shows that it runs")
		assert.True(t, d.checkNote.Visible())
		assert.Contains(t, d.checkNote.Text, "Regenerating")
		s.waitFor(t, jobDeadline, what, func() bool { return !d.checks[d.d.ID].running })
		assert.False(t, d.checkBar.Visible())
		assert.False(t, d.check.Disabled(), "the check can run again")
	}

	check("the check of the image as made")
	assert.Contains(t, d.checkNote.Text, "Reproduces: regenerated from its settings, identical pixel for pixel.")
	assert.Contains(t, d.checkNote.Text, "Same device (cpu), dtype (float32), versions and speed settings as the recorded run.")
	assert.Equal(t, widget.SuccessImportance, d.checkNote.Importance)

	// The history is not polluted: still one job and one image, and no
	// regenerated file is left behind.
	assert.Equal(t, 1, jobCount(t, st))
	imgs, err := st.RecentImages(context.Background(), 0)
	require.NoError(t, err)
	assert.Len(t, imgs, 1)
	left, err := filepath.Glob(filepath.Join(dirs.Cache, "atelier-verify-*"))
	require.NoError(t, err)
	assert.Empty(t, left)

	brightenPixel(t, path, 3, 5)
	check("the check of the changed image")
	assert.Contains(t, d.checkNote.Text, "Does not reproduce exactly: it differs: 1 of 4096 pixels (0.02%), by at most 40 of 255 in a channel.")
	assert.Contains(t, d.checkNote.Text, "PNG parameters text: none then, present now", "the rewritten file lost its parameters, and that is said")
	assert.Equal(t, widget.WarningImportance, d.checkNote.Importance)

	// Back in the gallery and on the image again, the result is still there.
	test.Tap(d.back)
	test.Tap(s.tile(t, path))
	assert.True(t, d.checkNote.Visible())
	assert.Contains(t, d.checkNote.Text, "1 of 4096 pixels")
}

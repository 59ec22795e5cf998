package ui

import (
	"flag"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"atelier/core/request"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/test"
	"fyne.io/fyne/v2/widget"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// shotsDir, when set (make screenshot), keeps each section's picture.
var shotsDir = flag.String("shots", "", "write one PNG per form section into this folder")

// TestSectionScreenshots renders each feature section of the form, filled in,
// with the studio's theme, and checks that every picture shows a real form.
// make screenshot keeps them as docs/sections/*.png.
func TestSectionScreenshots(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	s.app.Settings().SetTheme(newStudioTheme())
	f, x := s.form, s.form
	setForm(s, "a lighthouse on a cliff at dusk", 30, 1024, 1024)
	f.sampling.scheduler.SetSelected("DPM++ 2M")
	x.sampling.schedule.SetSelected("Karras")
	test.Tap(x.lora.add)
	test.Tap(x.lora.add)
	x.lora.rows[0].path.SetText("detail-tweaker.safetensors")
	x.lora.rows[0].weight.SetText("0.8")
	x.lora.rows[1].path.SetText(request.TinyLoRA)
	x.lora.rows[1].weight.SetText("-0.5")
	test.Tap(x.controlNet.add)
	x.controlNet.rows[0].kind.SetSelected("canny")
	x.controlNet.rows[0].model.SetText(request.TinyControlNet)
	x.controlNet.rows[0].image.SetText("edges.png")
	x.refiner.refiner.SetText(request.TinyRefiner)
	x.refiner.slider.SetValue(0.8)
	x.vae.vae.SetText(request.TinyVAE)
	x.img2img.initImage.SetText("photo.png")
	x.img2img.strength.SetText("0.6")
	x.img2img.mask.SetText("mask.png")
	x.upscale.upscaler.SetText(request.LanczosUpscaler)
	x.upscale.factor.SetText("2")
	f.batch.batchSize.SetSelected("2")
	x.batch.batchCount.SetText("4")
	_, verr := f.request()
	require.Nil(t, verr, "the example values are valid")

	acc := x.accordion
	require.NotNil(t, acc)
	// The sections are shown on their own, out of the studio's scroller.
	s.form.onLayout = nil
	for i, name := range foldedTitles {
		for j := range acc.Items {
			if j == i {
				acc.Open(j)
			} else {
				acc.Close(j)
			}
		}
		w := test.NewTempWindow(t, container.NewPadded(x.folds))
		size := acc.MinSize().Add(fyne.NewSquareSize(16))
		w.Resize(fyne.NewSize(max(size.Width, 440), size.Height))
		// A paragraph wraps to fewer lines at the window's width: fit again.
		s.q.drain()
		w.Resize(fyne.NewSize(max(size.Width, 440), acc.MinSize().Height+16))
		img := w.Canvas().Capture()
		assert.True(t, acc.Items[i].Open, name)
		assert.Greater(t, colours(img), 8, "section %q renders as a form, not a blank", name)
		// The open section is taller than the closed headers alone.
		assert.Greater(t, acc.Items[i].Detail.Size().Height, float32(20), name)
		w.SetContent(widget.NewLabel("")) // frees acc for the next window
		if *shotsDir != "" {
			require.NoError(t, os.MkdirAll(*shotsDir, 0o755))
			writeShot(t, filepath.Join(*shotsDir, slug(name)+".png"), img)
		}
	}
}

func colours(img image.Image) int {
	seen := map[[4]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, a := img.At(x, y).RGBA()
			seen[[4]uint32{r, g, bl, a}] = true
		}
	}
	return len(seen)
}

func writeShot(t *testing.T, path string, img image.Image) {
	t.Helper()
	out, err := os.Create(path)
	require.NoError(t, err)
	require.NoError(t, png.Encode(out, img))
	require.NoError(t, out.Close())
}

func slug(title string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(title) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
	}
	return strings.TrimSuffix(b.String(), "-")
}

package verify

import (
	"image"
	"image/color"
	"testing"

	"github.com/stretchr/testify/assert"
)

func filled(w, h int, c color.NRGBA) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.SetNRGBA(x, y, c)
		}
	}
	return img
}

func TestCompareCountsPixelsAndTheLargestChannelDifference(t *testing.T) {
	base := color.NRGBA{R: 100, G: 100, B: 100, A: 255}
	a, b := filled(8, 4, base), filled(8, 4, base)
	var same ImageCheck
	compare(&same, a, b)
	assert.True(t, same.Identical)
	assert.Equal(t, 32, same.Pixels)
	assert.Equal(t, "identical", same.Summary())

	b.SetNRGBA(1, 1, color.NRGBA{R: 103, G: 100, B: 100, A: 255})
	b.SetNRGBA(7, 3, color.NRGBA{R: 100, G: 100, B: 80, A: 255}) // the last pixel of the last row
	var c ImageCheck
	compare(&c, a, b)
	assert.False(t, c.Identical)
	assert.Equal(t, 2, c.DiffPixels)
	assert.Equal(t, 20, c.MaxDiff, "a darker channel counts as much as a brighter one")
	assert.InDelta(t, 6.25, c.DiffPercent(), 1e-9)
	assert.Equal(t, "differs: 2 of 32 pixels (6.25%), by at most 20 of 255 in a channel", c.Summary())

	var sized ImageCheck
	compare(&sized, a, filled(4, 4, base))
	assert.True(t, sized.SizeDiffers)
	assert.False(t, sized.Identical)
	assert.Contains(t, sized.Summary(), "the regenerated image is 4 × 4")
}

func TestDifferencesNameWhatTheRecordedRunLacks(t *testing.T) {
	now := Run{Device: "cpu", Dtype: "float32", Versions: map[string]string{"torch": "2.9.1", "diffusers": "0.36.0"},
		Speed: map[string]string{"compile": "off", "sdpa": "auto"}}
	assert.Empty(t, differences(now, now))

	then := Run{Device: "cuda", Dtype: "float16", Versions: map[string]string{"torch": "2.8.0", "diffusers": "0.36.0"},
		Speed: map[string]string{"compile": "regional", "sdpa": "auto"}}
	assert.Equal(t, []Difference{
		{What: "device", Recorded: "cuda", Now: "cpu"},
		{What: "dtype", Recorded: "float16", Now: "float32"},
		{What: "torch version", Recorded: "2.8.0", Now: "2.9.1"},
		{What: "speed setting compile", Recorded: "regional", Now: "off"},
	}, differences(then, now))

	old := Run{Device: "cpu", Dtype: "float32"}
	d := differences(old, now)
	assert.Equal(t, []Difference{
		{What: "diffusers version", Now: "0.36.0"},
		{What: "torch version", Now: "2.9.1"},
		{What: "speed settings", Now: "compile=off sdpa=auto"},
	}, d)
	assert.Equal(t, "torch version: not recorded then, 2.9.1 now", d[1].String())
}

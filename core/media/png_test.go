package media

import (
	"bytes"
	"image"
	"image/color"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/internal/pngtest"
)

func TestThumbnailer(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "big.png")
	pngtest.Write(t, src, 640, 320, color.NRGBA{R: 200, A: 255})
	th := NewThumbnailer(filepath.Join(dir, "cache"), 128)
	p, err := th.Ensure(src)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(p, filepath.Join(dir, "cache", "thumbs", "128")), p)
	img, err := th.Load(src)
	require.NoError(t, err)
	assert.Equal(t, image.Pt(128, 64), img.Bounds().Size(), "fits the box, keeps the aspect")
	fi1, err := os.Stat(p)
	require.NoError(t, err)

	// Fresh: not made again. Stale (the image changed): made again.
	_, err = th.Ensure(src)
	require.NoError(t, err)
	fi2, _ := os.Stat(p)
	assert.Equal(t, fi1.ModTime(), fi2.ModTime())
	pngtest.Write(t, src, 320, 640, color.NRGBA{G: 200, A: 255})
	future := time.Now().Add(time.Minute)
	require.NoError(t, os.Chtimes(src, future, future))
	img, err = th.Load(src)
	require.NoError(t, err)
	assert.Equal(t, image.Pt(64, 128), img.Bounds().Size())

	_, err = th.Ensure(filepath.Join(dir, "missing.png"))
	assert.Error(t, err)
	require.NoError(t, th.Remove(src))
	assert.NoFileExists(t, p)
}

func TestReadPNGText(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "text.png")
	pngtest.Write(t, p, 8, 8, color.Black,
		pngtest.Text("parameters", "a lighthouse\nSteps: 4, Sampler: Euler, Seed: 7"),
		pngtest.ZText("Comment", "zipped text"),
		pngtest.IText("Title", "Leuchtturm über dem Meer", false),
		pngtest.IText("Description", "compressed international", true),
		pngtest.Text("Author", "Caf\xe9")) // Latin-1, as the PNG spec says
	f, err := os.Open(p)
	require.NoError(t, err)
	defer f.Close()
	got, err := ReadPNGText(f)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{
		"parameters":  "a lighthouse\nSteps: 4, Sampler: Euler, Seed: 7",
		"Comment":     "zipped text",
		"Title":       "Leuchtturm über dem Meer",
		"Description": "compressed international",
		"Author":      "Café",
	}, got)

	_, err = ReadPNGText(strings.NewReader("GIF89a not a png"))
	assert.Error(t, err)
	// A truncated file keeps what was read.
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	got, err = ReadPNGText(bytes.NewReader(b[:len(b)/2]))
	if err == nil {
		assert.Contains(t, got, "parameters")
	}
}

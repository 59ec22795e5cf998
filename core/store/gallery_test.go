package store

import (
	"context"
	"encoding/json"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/core/internal/pngtest"
	"atelier/core/media"
	"atelier/core/protocol"
	"atelier/core/request"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// addImage records a done job with one real PNG image and returns the image id.
func addImage(t testing.TB, s *Store, dir string, req request.Request, starred bool) int64 {
	t.Helper()
	ctx := context.Background()
	uid := NewJobUID(time.Now())
	id, err := s.CreateJob(ctx, uid, req)
	require.NoError(t, err)
	path := filepath.Join(dir, uid+"-0.png")
	pngtest.Write(t, path, req.Width, req.Height, color.NRGBA{R: uint8(req.Seed), G: 80, B: 160, A: 255},
		pngtest.Text("parameters", fmt.Sprintf("%s\nSteps: %d, Sampler: Euler, CFG scale: %g, Seed: %d, Size: %dx%d, Model: %s",
			req.Prompt, req.Steps, req.CFG, req.Seed, req.Width, req.Height, req.Model)))
	require.NoError(t, s.FinishJob(ctx, id, &protocol.Metrics{TotalS: 2, DenoiseS: 1.5, ItS: 3, Device: "cpu", Dtype: "float32"},
		[]protocol.ImageResult{{Path: path, Seed: req.Seed, Width: req.Width, Height: req.Height}}))
	var imgID int64
	require.NoError(t, s.db.QueryRow(`SELECT id FROM images WHERE job_id = ?`, id).Scan(&imgID))
	if starred {
		require.NoError(t, s.SetStarred(ctx, imgID, true))
	}
	return imgID
}

func galleryRequest(prompt, model string, seed int64) request.Request {
	r := request.DefaultRequest()
	r.Prompt, r.NegativePrompt, r.Model, r.Seed = prompt, "blurry, fog", model, seed
	r.Steps, r.Width, r.Height, r.BatchSize = 4, 64, 64, 1
	return r
}

func prompts(imgs []ImageRecord) []string {
	out := make([]string, len(imgs))
	for i, im := range imgs {
		out[i] = im.Prompt
	}
	return out
}

func TestGallerySearchAndFilters(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	dir := t.TempDir()
	lighthouse := addImage(t, s, dir, galleryRequest("a lighthouse at dusk", "tiny", 1), true)
	addImage(t, s, dir, galleryRequest("a red fox in snow", "tiny", 2), false)
	addImage(t, s, dir, galleryRequest("lighthouses of Brittany", "/models/sdxl-base", 3), false)
	session, err := s.NewSession(ctx, "evening", SessionUI)
	require.NoError(t, err)
	sessReq := galleryRequest("owl portrait", "tiny", 4)
	sessReq.NegativePrompt = ""
	ids, err := s.Enqueue(ctx, session, []request.Request{sessReq})
	require.NoError(t, err)
	j, err := s.ClaimNext(ctx)
	require.NoError(t, err)
	require.Equal(t, ids[0], j.ID)
	owlPath := filepath.Join(dir, "owl.png")
	pngtest.Write(t, owlPath, 64, 64, color.White)
	require.NoError(t, s.FinishJob(ctx, j.ID, &protocol.Metrics{TotalS: 1}, []protocol.ImageResult{{Path: owlPath, Seed: 4, Width: 64, Height: 64}}))

	search := func(q GalleryQuery) []string {
		t.Helper()
		imgs, err := s.SearchImages(ctx, q, 0, 0)
		require.NoError(t, err)
		n, err := s.CountImages(ctx, q)
		require.NoError(t, err)
		assert.Equal(t, len(imgs), n, "count and search agree for %+v", q)
		return prompts(imgs)
	}
	seed := int64(2)
	for _, tc := range []struct {
		name string
		q    GalleryQuery
		want []string
	}{
		{"everything, newest first", GalleryQuery{}, []string{"owl portrait", "lighthouses of Brittany", "a red fox in snow", "a lighthouse at dusk"}},
		{"word", GalleryQuery{Text: "fox"}, []string{"a red fox in snow"}},
		{"prefix while typing", GalleryQuery{Text: "lightho"}, []string{"lighthouses of Brittany", "a lighthouse at dusk"}},
		{"finished word is not a prefix", GalleryQuery{Text: "lighthouse "}, []string{"a lighthouse at dusk"}},
		{"every word", GalleryQuery{Text: "lighthouse dusk"}, []string{"a lighthouse at dusk"}},
		{"negative prompt", GalleryQuery{Text: "blurry"}, []string{"lighthouses of Brittany", "a red fox in snow", "a lighthouse at dusk"}},
		{"operators are text", GalleryQuery{Text: `fox" OR "owl`}, nil},
		{"punctuation only", GalleryQuery{Text: `"*()`}, []string{"owl portrait", "lighthouses of Brittany", "a red fox in snow", "a lighthouse at dusk"}},
		{"model", GalleryQuery{Model: "/models/sdxl-base"}, []string{"lighthouses of Brittany"}},
		{"seed", GalleryQuery{Seed: &seed}, []string{"a red fox in snow"}},
		{"starred", GalleryQuery{Starred: true}, []string{"a lighthouse at dusk"}},
		{"session", GalleryQuery{SessionID: session}, []string{"owl portrait"}},
		{"text and model", GalleryQuery{Text: "lighthouse", Model: "tiny"}, []string{"a lighthouse at dusk"}},
		{"dates", GalleryQuery{From: time.Now().Add(-time.Hour), To: time.Now().Add(time.Hour)}, []string{"owl portrait", "lighthouses of Brittany", "a red fox in snow", "a lighthouse at dusk"}},
		{"future", GalleryQuery{From: time.Now().Add(time.Hour)}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := search(tc.q)
			if tc.want == nil {
				assert.Empty(t, got)
			} else {
				assert.Equal(t, tc.want, got)
			}
			// The LIKE baseline agrees on plain words.
			if tc.q.Text != "" && !strings.ContainsAny(tc.q.Text, `"* `) {
				like := tc.q
				like.likeScan = true
				assert.ElementsMatch(t, search(like), got)
			}
		})
	}

	page, err := s.SearchImages(ctx, GalleryQuery{}, 1, 2)
	require.NoError(t, err)
	assert.Equal(t, []string{"lighthouses of Brittany", "a red fox in snow"}, prompts(page))

	models, err := s.GalleryModels(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"tiny", "/models/sdxl-base"}, models)

	d, err := s.GetImage(ctx, lighthouse)
	require.NoError(t, err)
	assert.Equal(t, "a lighthouse at dusk", d.Request.Prompt)
	assert.Equal(t, "blurry, fog", d.Request.NegativePrompt)
	assert.Equal(t, int64(1), d.Request.Seed)
	assert.True(t, d.Starred)
	require.NotNil(t, d.Metrics)
	assert.Equal(t, "cpu", d.Metrics.Device)
	_, err = s.GetImage(ctx, 9999)
	assert.ErrorIs(t, err, ErrNotFound)
}

func TestGalleryStarAndDelete(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	dir := t.TempDir()
	id := addImage(t, s, dir, galleryRequest("to delete", "tiny", 9), false)
	keep := addImage(t, s, dir, galleryRequest("to keep", "tiny", 10), false)
	require.NoError(t, s.SetStarred(ctx, id, true))
	d, err := s.GetImage(ctx, id)
	require.NoError(t, err)
	assert.True(t, d.Starred)
	require.NoError(t, s.SetStarred(ctx, id, false))
	assert.ErrorIs(t, s.SetStarred(ctx, 9999, true), ErrNotFound)

	thumbs := media.NewThumbnailer(t.TempDir(), 128)
	tp, err := thumbs.Ensure(d.Path)
	require.NoError(t, err)
	assert.FileExists(t, tp)

	rec, err := s.DeleteImage(ctx, id)
	require.NoError(t, err)
	require.NoError(t, media.DeleteImageFiles(rec.Path, thumbs))
	assert.NoFileExists(t, d.Path)
	assert.NoFileExists(t, tp)
	_, err = s.GetImage(ctx, id)
	assert.ErrorIs(t, err, ErrNotFound)
	_, err = s.DeleteImage(ctx, id)
	assert.ErrorIs(t, err, ErrNotFound)
	require.NoError(t, media.DeleteImageFiles(rec.Path, thumbs), "deleting files already gone is fine")
	n, err := s.CountImages(ctx, GalleryQuery{Text: "delete"})
	require.NoError(t, err)
	assert.Zero(t, n)
	_, err = s.GetImage(ctx, keep)
	assert.NoError(t, err)
}

func TestExportImages(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	dir := t.TempDir()
	a := addImage(t, s, dir, galleryRequest("first export", "tiny", 21), true)
	b := addImage(t, s, dir, galleryRequest("second export", "tiny", 22), false)

	out := filepath.Join(t.TempDir(), "export")
	files, err := ExportImages(ctx, s, []int64{a, b}, out)
	require.NoError(t, err)
	require.Len(t, files, 2)
	for i, id := range []int64{a, b} {
		d, err := s.GetImage(ctx, id)
		require.NoError(t, err)
		src, err := os.ReadFile(d.Path)
		require.NoError(t, err)
		dst, err := os.ReadFile(files[i])
		require.NoError(t, err)
		assert.Equal(t, src, dst, "the PNG is copied as it is, metadata chunk included")
		var side ExportedImage
		sb, err := os.ReadFile(strings.TrimSuffix(files[i], ".png") + ".json")
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(sb, &side))
		assert.Equal(t, filepath.Base(files[i]), side.File)
		assert.Equal(t, d.Request, side.Detail.Request)
		assert.Equal(t, d.Seed, side.Detail.Seed)
	}

	// Exporting again never overwrites: names get a suffix.
	again, err := ExportImages(ctx, s, []int64{a}, out)
	require.NoError(t, err)
	assert.True(t, strings.HasSuffix(again[0], "-1.png"), again[0])
	entries, err := os.ReadDir(out)
	require.NoError(t, err)
	assert.Len(t, entries, 6, "three PNGs and their sidecars, no temporary files")

	notDir := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(notDir, nil, 0o644))
	_, err = ExportImages(ctx, s, []int64{a}, notDir)
	assert.ErrorContains(t, err, "not a folder")
	_, err = ExportImages(ctx, s, []int64{9999}, out)
	assert.ErrorIs(t, err, ErrNotFound)
}

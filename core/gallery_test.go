package core

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pngChunk encodes one PNG chunk with its CRC.
func pngChunk(typ string, data []byte) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.BigEndian, uint32(len(data))) //nolint:errcheck // a bytes.Buffer does not fail
	b.WriteString(typ)
	b.Write(data)
	crc := crc32.NewIEEE()
	crc.Write([]byte(typ))
	crc.Write(data)
	binary.Write(&b, binary.BigEndian, crc.Sum32()) //nolint:errcheck // idem
	return b.Bytes()
}

// writeTestPNG writes a w×h PNG of one colour with extra chunks after IHDR.
func writeTestPNG(t testing.TB, path string, w, h int, c color.Color, chunks ...[]byte) {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, c)
		}
	}
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, img))
	b := buf.Bytes()
	const ihdrEnd = 8 + 8 + 13 + 4 // signature, IHDR head, IHDR data, CRC
	out := append([]byte{}, b[:ihdrEnd]...)
	for _, ch := range chunks {
		out = append(out, ch...)
	}
	out = append(out, b[ihdrEnd:]...)
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, out, 0o644))
}

func textChunk(key, value string) []byte { return pngChunk("tEXt", []byte(key+"\x00"+value)) }

func zTextChunk(key, value string) []byte {
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write([]byte(value)) //nolint:errcheck // a bytes.Buffer does not fail
	zw.Close()
	return pngChunk("zTXt", append([]byte(key+"\x00\x00"), z.Bytes()...))
}

func iTextChunk(key, value string, compressed bool) []byte {
	flag := byte(0)
	body := []byte(value)
	if compressed {
		flag = 1
		var z bytes.Buffer
		zw := zlib.NewWriter(&z)
		zw.Write(body) //nolint:errcheck // a bytes.Buffer does not fail
		zw.Close()
		body = z.Bytes()
	}
	data := append([]byte(key+"\x00"), flag, 0)
	data = append(data, []byte("en\x00"+key+"\x00")...)
	return pngChunk("iTXt", append(data, body...))
}

// addImage records a done job with one real PNG image and returns the image id.
func addImage(t testing.TB, s *Store, dir string, req Request, starred bool) int64 {
	t.Helper()
	ctx := context.Background()
	uid := newJobUID(time.Now())
	id, err := s.CreateJob(ctx, uid, req)
	require.NoError(t, err)
	path := filepath.Join(dir, uid+"-0.png")
	writeTestPNG(t, path, req.Width, req.Height, color.NRGBA{R: uint8(req.Seed), G: 80, B: 160, A: 255},
		textChunk("parameters", fmt.Sprintf("%s\nSteps: %d, Sampler: Euler, CFG scale: %g, Seed: %d, Size: %dx%d, Model: %s",
			req.Prompt, req.Steps, req.CFG, req.Seed, req.Width, req.Height, req.Model)))
	require.NoError(t, s.FinishJob(ctx, id, &Metrics{TotalS: 2, DenoiseS: 1.5, ItS: 3, Device: "cpu", Dtype: "float32"},
		[]ImageResult{{Path: path, Seed: req.Seed, Width: req.Width, Height: req.Height}}))
	var imgID int64
	require.NoError(t, s.db.QueryRow(`SELECT id FROM images WHERE job_id = ?`, id).Scan(&imgID))
	if starred {
		require.NoError(t, s.SetStarred(ctx, imgID, true))
	}
	return imgID
}

func galleryRequest(prompt, model string, seed int64) Request {
	r := DefaultRequest()
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
	ids, err := s.Enqueue(ctx, session, []Request{sessReq})
	require.NoError(t, err)
	j, err := s.ClaimNext(ctx)
	require.NoError(t, err)
	require.Equal(t, ids[0], j.ID)
	owlPath := filepath.Join(dir, "owl.png")
	writeTestPNG(t, owlPath, 64, 64, color.White)
	require.NoError(t, s.FinishJob(ctx, j.ID, &Metrics{TotalS: 1}, []ImageResult{{Path: owlPath, Seed: 4, Width: 64, Height: 64}}))

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

	thumbs := NewThumbnailer(t.TempDir(), 128)
	tp, err := thumbs.Ensure(d.Path)
	require.NoError(t, err)
	assert.FileExists(t, tp)

	rec, err := s.DeleteImage(ctx, id)
	require.NoError(t, err)
	require.NoError(t, DeleteImageFiles(rec.Path, thumbs))
	assert.NoFileExists(t, d.Path)
	assert.NoFileExists(t, tp)
	_, err = s.GetImage(ctx, id)
	assert.ErrorIs(t, err, ErrNotFound)
	_, err = s.DeleteImage(ctx, id)
	assert.ErrorIs(t, err, ErrNotFound)
	require.NoError(t, DeleteImageFiles(rec.Path, thumbs), "deleting files already gone is fine")
	n, err := s.CountImages(ctx, GalleryQuery{Text: "delete"})
	require.NoError(t, err)
	assert.Zero(t, n)
	_, err = s.GetImage(ctx, keep)
	assert.NoError(t, err)
}

func TestThumbnailer(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "big.png")
	writeTestPNG(t, src, 640, 320, color.NRGBA{R: 200, A: 255})
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
	writeTestPNG(t, src, 320, 640, color.NRGBA{G: 200, A: 255})
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
	writeTestPNG(t, p, 8, 8, color.Black,
		textChunk("parameters", "a lighthouse\nSteps: 4, Sampler: Euler, Seed: 7"),
		zTextChunk("Comment", "zipped text"),
		iTextChunk("Title", "Leuchtturm über dem Meer", false),
		iTextChunk("Description", "compressed international", true),
		textChunk("Author", "Caf\xe9")) // Latin-1, as the PNG spec says
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

func TestImportPNG(t *testing.T) {
	dir := t.TempDir()
	models := filepath.Join(dir, "models")
	require.NoError(t, os.MkdirAll(filepath.Join(models, "sdxl-base"), 0o755))

	// Our own chunk: exactly what the worker writes (the infotext golden).
	own, err := os.ReadFile(filepath.Join("testdata", "infotext", "atelier_own.txt"))
	require.NoError(t, err)
	p := filepath.Join(dir, "own.png")
	writeTestPNG(t, p, 64, 64, color.White, textChunk("parameters", strings.TrimSpace(string(own))))
	base := DefaultRequest()
	base.Model = "/somewhere/else"
	got, err := ImportPNG(p, base, models)
	require.NoError(t, err)
	assert.Equal(t, "a lighthouse", got.Request.Prompt)
	assert.Equal(t, 4, got.Request.Steps)
	assert.Equal(t, int64(7), got.Request.Seed)
	assert.Equal(t, 64, got.Request.Width)
	assert.Equal(t, "euler", got.Request.Scheduler)
	assert.Equal(t, TinyModel, got.Request.Model)
	assert.Empty(t, got.Notes)

	// AUTOMATIC1111's infotext, in an iTXt chunk as some tools write it.
	a1111, err := os.ReadFile(filepath.Join("testdata", "infotext", "a1111_full.txt"))
	require.NoError(t, err)
	var golden Infotext
	gb, err := os.ReadFile(filepath.Join("testdata", "infotext", "a1111_full.golden.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(gb, &golden))
	p = filepath.Join(dir, "a1111.png")
	writeTestPNG(t, p, 64, 64, color.White, iTextChunk("parameters", string(a1111), true))
	got, err = ImportPNG(p, base, models)
	require.NoError(t, err)
	assert.Equal(t, golden.Prompt, got.Request.Prompt)
	assert.Equal(t, golden.NegativePrompt, got.Request.NegativePrompt)
	want := base
	golden.ApplyTo(&want)
	assert.Equal(t, want.Steps, got.Request.Steps)
	assert.Equal(t, want.Seed, got.Request.Seed)
	assert.Equal(t, want.CFG, got.Request.CFG)

	// A model folder of that name under the models folder is used.
	p = filepath.Join(dir, "named.png")
	writeTestPNG(t, p, 64, 64, color.White, textChunk("parameters", "x\nSteps: 4, Seed: 1, Size: 64x64, Model: sdxl-base"))
	got, err = ImportPNG(p, base, models)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(models, "sdxl-base"), got.Request.Model)
	p = filepath.Join(dir, "unknown.png")
	writeTestPNG(t, p, 64, 64, color.White, textChunk("parameters", "x\nSteps: 4, Seed: 1, Size: 64x64, Model: nowhere"))
	got, err = ImportPNG(p, base, models)
	require.NoError(t, err)
	assert.Equal(t, base.Model, got.Request.Model)
	require.Len(t, got.Notes, 1)
	assert.Contains(t, got.Notes[0], "nowhere")

	p = filepath.Join(dir, "plain.png")
	writeTestPNG(t, p, 8, 8, color.White)
	_, err = ImportPNG(p, base, models)
	assert.ErrorContains(t, err, "no generation settings")
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

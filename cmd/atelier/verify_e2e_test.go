//go:build linux

package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
	"atelier/core/verify"
)

// verifyLeftovers lists what a check left in the home's cache: its temporary
// folders must be gone.
func verifyLeftovers(t *testing.T, h *home) []string {
	t.Helper()
	found, err := filepath.Glob(filepath.Join(h.dir, "cache", "atelier-verify-*"))
	require.NoError(t, err)
	return found
}

func TestHistoryVerifyRegeneratesAJobWithIdenticalPixels(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	_, stderr, code := h.run(append(append([]string{}, tinyArgs...), "--batch-size", "2")...)
	require.Equal(t, 0, code, stderr)
	before := h.history()
	require.Len(t, before, 1)
	require.Len(t, before[0].Images, 2)
	m := before[0].Metrics
	require.NotNil(t, m)
	assert.NotEmpty(t, m.Versions["torch"], "the job records the torch version it ran with")
	assert.NotEmpty(t, m.Versions["diffusers"])
	assert.Equal(t, "off", m.Speed["compile"], "and its speed settings")
	files := h.images()

	stdout, stderr, code := h.run("history", "verify", "1")
	require.Equal(t, exitOK, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
	assert.Contains(t, stderr, "Checking job 1 (tiny, 64 × 64, seed 7, 4 steps, batch of 2): regenerating it from its stored settings")
	assert.Contains(t, stderr, "denoising", "the regeneration shows its progress")
	assert.Contains(t, stdout, "image 1 of 2 (id 1, seed 7): identical")
	assert.Contains(t, stdout, "image 2 of 2 (id 2, seed 8): identical")
	assert.Contains(t, stdout, "Same device (cpu), dtype (float32), versions and speed settings as the recorded run.")
	assert.True(t, strings.HasSuffix(stdout, "identical\n"), stdout)

	// The history is not polluted: no job, no image, no file was added.
	after := h.history()
	require.Len(t, after, 1)
	assert.Len(t, after[0].Images, 2)
	assert.Equal(t, files, h.images())
	assert.Empty(t, verifyLeftovers(t, h))

	// A job recorded before jobs kept their versions and speed settings, on
	// another device: the pixels still compare, and what differs is said.
	s, err := store.OpenStore(filepath.Join(h.dir, "data", "atelier.db"))
	require.NoError(t, err)
	req := before[0].Request
	req.BatchSize = 1
	id, err := s.CreateJob(t.Context(), "older-job", req)
	require.NoError(t, err)
	copyPath := filepath.Join(t.TempDir(), "older.png")
	copyFile(t, before[0].Images[0].Path, copyPath)
	require.NoError(t, s.FinishJob(t.Context(), id, &protocol.Metrics{TotalS: 1, Device: "cuda", Dtype: "float16"},
		[]protocol.ImageResult{{Path: copyPath, Seed: 7, Width: 64, Height: 64}}))
	require.NoError(t, s.Close())

	stdout, stderr, code = h.run("history", "verify", "--json", "2")
	require.Equal(t, exitOK, code, "stderr:\n%s", stderr)
	var rep verify.Report
	require.NoError(t, json.Unmarshal([]byte(stdout), &rep), stdout)
	assert.True(t, rep.Identical)
	require.Len(t, rep.Images, 1)
	assert.True(t, rep.Images[0].Identical)
	assert.Equal(t, 4096, rep.Images[0].Pixels)
	assert.Equal(t, m.Versions, rep.Now.Versions)
	assert.Contains(t, rep.Differences, verify.Difference{What: "device", Recorded: "cuda", Now: "cpu"})
	assert.Contains(t, rep.Differences, verify.Difference{What: "dtype", Recorded: "float16", Now: "float32"})
	assert.Contains(t, rep.Differences, verify.Difference{What: "torch version", Now: m.Versions["torch"]})
	assert.Len(t, h.history(), 2)

	stdout, _, code = h.run("history", "verify", "2")
	require.Equal(t, exitOK, code)
	assert.Contains(t, stdout, "What differs between the recorded run and this one:\n  device: cuda then, cpu now\n")
	assert.Contains(t, stdout, "torch version: not recorded then, "+m.Versions["torch"]+" now")
}

// changePixel adds delta to the red channel of one pixel of a PNG, keeping
// its parameters text.
func changePixel(t *testing.T, path string, x, y int, delta uint8) {
	t.Helper()
	params := pngText(t, path)["parameters"]
	src, err := png.Decode(bytes.NewReader(readFile(t, path)))
	require.NoError(t, err)
	img := image.NewNRGBA(src.Bounds())
	draw.Draw(img, img.Bounds(), src, image.Point{}, draw.Src)
	c := img.NRGBAAt(x, y)
	img.SetNRGBA(x, y, color.NRGBA{R: c.R + delta, G: c.G, B: c.B, A: c.A})
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, img))
	b := buf.Bytes()
	data := []byte("parameters\x00" + params)
	chunk := binary.BigEndian.AppendUint32(nil, uint32(len(data)))
	chunk = append(append(chunk, "tEXt"...), data...)
	chunk = binary.BigEndian.AppendUint32(chunk, crc32.ChecksumIEEE(append([]byte("tEXt"), data...)))
	const ihdrEnd = 8 + 8 + 13 + 4
	out := append(append(append([]byte{}, b[:ihdrEnd]...), chunk...), b[ihdrEnd:]...)
	require.NoError(t, os.WriteFile(path, out, 0o644))
}

func TestHistoryVerifyReportsAChangedPixel(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	stdout, stderr, code := h.run(tinyArgs...)
	require.Equal(t, 0, code, stderr)
	path := strings.TrimSpace(stdout)
	original := pixels(t, path)
	changePixel(t, path, 10, 20, 40)

	keep := filepath.Join(t.TempDir(), "kept")
	stdout, stderr, code = h.run("history", "verify", "1", "--keep", keep)
	require.Equal(t, exitFailure, code, "a changed pixel is a difference: stdout:\n%s\nstderr:\n%s", stdout, stderr)
	assert.Contains(t, stdout, "image 1 of 1 (id 1, seed 7): differs: 1 of 4096 pixels (0.02%), by at most 40 of 255 in a channel")
	assert.Contains(t, stdout, "Same device (cpu)", "nothing but the file changed")
	assert.True(t, strings.HasSuffix(stdout, "differs\n"), stdout)

	// --keep keeps the regenerated image, outside the history: it is the
	// picture as it was made.
	kept := filepath.Join(keep, h.history()[0].UID+"-0-reproduced.png")
	assert.Contains(t, stdout, "regenerated: "+kept)
	assert.Equal(t, original, pixels(t, kept))
	assert.Len(t, h.history(), 1)
	assert.Empty(t, verifyLeftovers(t, h))
}

func TestHistoryVerifyRefusesWhatCannotBeChecked(t *testing.T) {
	h := newHome(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"history", "verify"}, "give one job ID"},
		{[]string{"history", "verify", "seven"}, `"seven" is not a job ID`},
		{[]string{"history", "verify", "1", "2"}, "give one job ID"},
		{[]string{"history", "verify", "9"}, "there is no job 9 in the history (`atelier history` lists the jobs)"},
	} {
		_, stderr, code := h.run(tc.args...)
		assert.Equal(t, exitUsage, code, "%v: %s", tc.args, stderr)
		assert.Contains(t, stderr, tc.want, tc.args)
	}

	// Jobs whose files are gone: the model and the recorded image. Neither
	// needs the worker to tell.
	s, err := store.OpenStore(filepath.Join(h.dir, "data", "atelier.db"))
	require.NoError(t, err)
	record := func(uid, model, image string) {
		req := request.DefaultRequest()
		req.Prompt, req.Model, req.Seed, req.Steps, req.Width, req.Height, req.BatchSize = "a lighthouse", model, 7, 4, 64, 64, 1
		id, err := s.CreateJob(t.Context(), uid, req)
		require.NoError(t, err)
		require.NoError(t, s.FinishJob(t.Context(), id, &protocol.Metrics{TotalS: 1, Device: "cpu", Dtype: "float32"},
			[]protocol.ImageResult{{Path: image, Seed: 7, Width: 64, Height: 64}}))
	}
	dir := t.TempDir()
	gone := filepath.Join(dir, "moved-away.safetensors")
	record("model-gone", gone, writeTestPNG(t, filepath.Join(dir, "a.png"), 64, 64, false))
	record("image-gone", request.TinyModel, filepath.Join(dir, "deleted.png"))
	failed, err := s.CreateJob(t.Context(), "failed-job", request.DefaultRequest())
	require.NoError(t, err)
	require.NoError(t, s.FailJob(t.Context(), failed, &failure.JobError{Code: failure.ErrInternal, Message: "x"}))
	require.NoError(t, s.Close())

	_, stderr, code := h.run("history", "verify", "1")
	assert.Equal(t, exitUsage, code, stderr)
	assert.Contains(t, stderr, "job 1's settings cannot run now")
	assert.Contains(t, stderr, "moved-away.safetensors")

	_, stderr, code = h.run("history", "verify", "2")
	assert.Equal(t, exitUsage, code, stderr)
	assert.Contains(t, stderr, "deleted.png")
	assert.Contains(t, stderr, "nothing to compare")

	_, stderr, code = h.run("history", "verify", "3")
	assert.Equal(t, exitUsage, code, stderr)
	assert.Contains(t, stderr, "job 3 is failed and has no images to compare")
	assert.Len(t, h.history(), 3)
}

func TestGenerateWarnsBeforeASizeThatTakesMinutesAStepOnTheCPU(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	_, stderr, code := h.run(tinyArgs...)
	require.Equal(t, 0, code, stderr)
	assert.NotContains(t, stderr, "warning:", "the tiny model's test size is quick on the CPU")

	// The history says this model crawls on this CPU (a job that took 2000 s
	// to denoise what the run above did in a moment): the next job is warned
	// of before the worker starts, and runs all the same.
	s, err := store.OpenStore(filepath.Join(h.dir, "data", "atelier.db"))
	require.NoError(t, err)
	req := h.history()[0].Request
	id, err := s.CreateJob(t.Context(), "slow-job", req)
	require.NoError(t, err)
	require.NoError(t, s.FinishJob(t.Context(), id, &protocol.Metrics{TotalS: 2001, DenoiseS: 2000, ItS: 0.002, Device: "cpu", Dtype: "float32"},
		[]protocol.ImageResult{{Path: filepath.Join(t.TempDir(), "slow.png"), Seed: 7, Width: 64, Height: 64}}))
	require.NoError(t, s.Close())

	stdout, stderr, code := h.run(tinyArgs...)
	require.Equal(t, 0, code, stderr)
	assert.NotEmpty(t, strings.TrimSpace(stdout))
	warn := strings.Index(stderr, "warning: 64 × 64 on the CPU takes about ")
	require.GreaterOrEqual(t, warn, 0, stderr)
	assert.Contains(t, stderr[warn:], "minutes a step")
	assert.Contains(t, stderr[warn:], "; use a GPU or a smaller size (measured in 2 earlier jobs of this model on the CPU)\n")
	assert.Less(t, warn, strings.Index(stderr, "starting the worker"), "the warning comes before the worker starts")
}

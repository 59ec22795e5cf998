//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/infotext"
	"atelier/core/library"
	"atelier/core/paths"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
)

func TestHistoryImportReadsAGeneratedPNG(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	args := append(append([]string{}, tinyArgs...), "--negative", "fog, rain", "--cfg", "6.5")
	stdout, stderr, code := h.run(args...)
	require.Equal(t, 0, code, stderr)
	png := strings.TrimSpace(stdout)

	out, stderr, code := h.run("history", "import", png, "--json")
	require.Equal(t, 0, code, stderr)
	var got infotext.ImportedSettings
	require.NoError(t, json.Unmarshal([]byte(out), &got), out)
	r := got.Request
	assert.Equal(t, "a lighthouse", r.Prompt)
	assert.Equal(t, "fog, rain", r.NegativePrompt)
	assert.Equal(t, request.TinyModel, r.Model)
	assert.Equal(t, 4, r.Steps)
	assert.Equal(t, 6.5, r.CFG)
	assert.Equal(t, int64(7), r.Seed)
	assert.Equal(t, 64, r.Width)
	assert.Equal(t, 64, r.Height)
	assert.Empty(t, got.Notes)

	// The settings are kept as the form's last ones, for the next window.
	s, err := store.OpenStore(filepath.Join(h.dir, "data", "atelier.db"))
	require.NoError(t, err)
	defer s.Close()
	last, ok, err := s.LastRequest(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, r, last)

	table, _, code := h.run("history", "import", png)
	require.Equal(t, 0, code)
	assert.Contains(t, table, "seed:")
	assert.Contains(t, table, "a lighthouse")

	_, stderr, code = h.run("history", "import", filepath.Join(t.TempDir(), "missing.png"))
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "missing.png")
}

func TestHistorySearchFindsImagesAsTheGalleryDoes(t *testing.T) {
	h := newHome(t)
	s, err := store.OpenStore(filepath.Join(h.dir, "data", "atelier.db"))
	require.NoError(t, err)
	record := func(prompt, model string, seed int64) store.ImageRecord {
		req := request.DefaultRequest()
		req.Prompt, req.Model, req.Seed, req.Steps, req.Width, req.Height = prompt, model, seed, 4, 64, 64
		id, err := s.CreateJob(t.Context(), fmt.Sprintf("job-%d", seed), req)
		require.NoError(t, err)
		p := writeTestPNG(t, filepath.Join(h.dir, fmt.Sprintf("img-%d.png", seed)), 64, 64, false)
		require.NoError(t, s.FinishJob(t.Context(), id, &protocol.Metrics{TotalS: 1, DenoiseS: 1, ItS: 4},
			[]protocol.ImageResult{{Path: p, Seed: seed, Width: 64, Height: 64}}))
		imgs, err := s.SearchImages(t.Context(), store.GalleryQuery{}, 0, 1)
		require.NoError(t, err)
		return imgs[0]
	}
	lighthouse := record("a lighthouse at dusk", "tiny", 1)
	record("a red fox in the snow", "tiny", 2)
	brittany := record("lighthouses of Brittany", "/models/sdxl", 3)
	require.NoError(t, s.SetStarred(t.Context(), brittany.ID, true))
	require.NoError(t, s.Close())

	out, stderr, code := h.run("history", "search", "--json", "lightho")
	require.Equal(t, 0, code, stderr)
	var got []store.ImageRecord
	require.NoError(t, json.Unmarshal([]byte(out), &got), out)
	paths := func(imgs []store.ImageRecord) []string {
		var p []string
		for _, im := range imgs {
			p = append(p, im.Path)
		}
		return p
	}
	assert.Equal(t, []string{brittany.Path, lighthouse.Path}, paths(got), "the last word as a prefix, newest first")

	out, _, code = h.run("history", "search", "--json", "--model", "tiny", "lighthouse")
	require.Equal(t, 0, code)
	require.NoError(t, json.Unmarshal([]byte(out), &got))
	assert.Equal(t, []string{lighthouse.Path}, paths(got))

	out, _, code = h.run("history", "search", "--starred")
	require.Equal(t, 0, code)
	assert.Contains(t, out, "lighthouses of Brittany")
	assert.NotContains(t, out, "fox")

	out, stderr, code = h.run("history", "search", "--json", "owl")
	require.Equal(t, 0, code, stderr)
	assert.JSONEq(t, "[]", out)

	_, stderr, code = h.run("history", "search")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "give words")
}

// readOnlyHome is a home whose files only another user can change, so that
// making them read-only binds the CLI even when the tests run as root (root
// ignores file modes): the CLI then runs as nobody.
type readOnlyHome struct {
	*home
	cred *syscall.Credential // nil: the CLI runs as this user
}

func newReadOnlyHome(t *testing.T) *readOnlyHome {
	dir, err := os.MkdirTemp("", "atelier-ro-")
	require.NoError(t, err)
	t.Cleanup(func() {
		filepath.WalkDir(dir, func(p string, _ fs.DirEntry, _ error) error { //nolint:errcheck // best effort before RemoveAll
			os.Chmod(p, 0o755)
			return nil
		})
		os.RemoveAll(dir)
	})
	h := &readOnlyHome{home: &home{t: t, dir: dir}}
	if os.Geteuid() == 0 {
		h.cred = &syscall.Credential{Uid: 65534, Gid: 65534}
		// nobody must reach the binary and the home.
		require.NoError(t, os.Chmod(filepath.Dir(atelierBin), 0o755))
		require.NoError(t, os.Chmod(dir, 0o755))
	}
	return h
}

// freeze hands the home to the CLI's user and takes away every write
// permission.
func (h *readOnlyHome) freeze() {
	h.t.Helper()
	require.NoError(h.t, filepath.WalkDir(h.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if h.cred != nil {
			if err := os.Lchown(p, int(h.cred.Uid), int(h.cred.Gid)); err != nil {
				return err
			}
		}
		mode := os.FileMode(0o444)
		if d.IsDir() {
			mode = 0o555
		}
		return os.Chmod(p, mode)
	}))
}

func (h *readOnlyHome) run(args ...string) (string, string, int) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := h.command(ctx, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if h.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: h.cred}
	}
	err := cmd.Run()
	code := 0
	if exit, ok := err.(*exec.ExitError); ok {
		code = exit.ExitCode()
	} else if err != nil {
		h.t.Skipf("cannot run the CLI as uid %d, which a read-only home needs when the tests run as root: %v", h.cred.Uid, err)
	}
	return stdout.String(), stderr.String(), code
}

func TestAReadOnlyHomeWithAHistoryIsReadAndNamedAsReadOnly(t *testing.T) {
	h := newReadOnlyHome(t)
	p := paths.PathsUnder(h.dir)
	require.NoError(t, p.EnsureDirs())
	db := p.DB
	s, err := store.OpenStore(db)
	require.NoError(t, err)
	req := request.DefaultRequest()
	req.Prompt, req.Steps, req.Width, req.Height, req.Seed = "a lighthouse at dusk", 4, 64, 64, 1
	id, err := s.CreateJob(t.Context(), "job-1", req)
	require.NoError(t, err)
	png := writeTestPNG(t, filepath.Join(p.Images, "1.png"), 64, 64, false)
	require.NoError(t, s.FinishJob(t.Context(), id, &protocol.Metrics{TotalS: 1, DenoiseS: 1, ItS: 4},
		[]protocol.ImageResult{{Path: png, Seed: 1, Width: 64, Height: 64}}))
	req.Prompt = "a red fox"
	_, err = s.Enqueue(t.Context(), 0, []request.Request{req})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	h.freeze()
	before := readFile(t, db)

	out, stderr, code := h.run("history", "--json")
	require.Equal(t, 0, code, stderr)
	var jobs []store.JobRecord
	require.NoError(t, json.Unmarshal([]byte(out), &jobs), out)
	require.Len(t, jobs, 2)
	assert.Contains(t, stderr, "cannot be written")

	out, stderr, code = h.run("history", "search", "--json", "lighthouse")
	require.Equal(t, 0, code, stderr)
	var found []store.ImageRecord
	require.NoError(t, json.Unmarshal([]byte(out), &found), out)
	require.Len(t, found, 1)
	assert.Equal(t, png, found[0].Path)

	out, stderr, code = h.run("queue", "list")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "a red fox")

	for _, args := range [][]string{{"queue", "add", "--prompt", "an owl"}, {"history", "import", png}} {
		_, stderr, code = h.run(args...)
		assert.Equal(t, exitFailure, code, "%v: %s", args, stderr)
		assert.Contains(t, stderr, "the folder "+filepath.Join(h.dir, "data")+" is read-only", args)
		assert.Contains(t, stderr, "ATELIER_HOME", args)
		assert.NotContains(t, stderr, "damaged", "%v: the advice to move the history away is wrong here", args)
	}
	assert.Equal(t, before, readFile(t, db), "reading a read-only history changes nothing")
}

// writeParametersPNG writes a small PNG whose "parameters" text chunk is text.
func writeParametersPNG(t *testing.T, path, text string) string {
	t.Helper()
	b := readFile(t, writeTestPNG(t, path, 64, 64, false))
	data := []byte("parameters\x00" + text)
	chunk := binary.BigEndian.AppendUint32(nil, uint32(len(data)))
	chunk = append(append(chunk, "tEXt"...), data...)
	chunk = binary.BigEndian.AppendUint32(chunk, crc32.ChecksumIEEE(append([]byte("tEXt"), data...)))
	const ihdrEnd = 8 + 8 + 13 + 4
	out := append(append(append([]byte{}, b[:ihdrEnd]...), chunk...), b[ihdrEnd:]...)
	require.NoError(t, os.WriteFile(path, out, 0o644))
	return path
}

func TestHistoryImportUsesOnlyWhatTheFormAccepts(t *testing.T) {
	h := newHome(t)
	dir := t.TempDir()
	bad := writeParametersPNG(t, filepath.Join(dir, "bad.png"), "a lighthouse\n"+
		"Steps: 500, Sampler: Euler, CFG scale: nan, Seed: 18446744073709551615, Size: 5000x5000, Model: tiny")
	out, stderr, code := h.run("history", "import", bad, "--json")
	require.Equal(t, 0, code, stderr)
	assert.NotContains(t, stderr, "unsupported value")
	for _, want := range []string{"note: steps must be between 1 and 150, got 500; keeping 30",
		"note: cfg must be between 0 and 30, got NaN; keeping 5",
		"note: Seed 18446744073709551615 is out of range; keeping a random seed",
		"note: width must be a multiple of 8", "note: height must be a multiple of 8"} {
		assert.Contains(t, stderr, want)
	}
	var got infotext.ImportedSettings
	require.NoError(t, json.Unmarshal([]byte(out), &got), out)
	def := request.DefaultRequest()
	assert.Equal(t, [5]float64{float64(def.Steps), def.CFG, float64(def.Seed), float64(def.Width), float64(def.Height)},
		[5]float64{float64(got.Request.Steps), got.Request.CFG, float64(got.Request.Seed), float64(got.Request.Width), float64(got.Request.Height)})
	assert.Len(t, got.Notes, 5)

	last := func() request.Request {
		s, err := store.OpenStore(filepath.Join(h.dir, "data", "atelier.db"))
		require.NoError(t, err)
		defer s.Close()
		r, ok, err := s.LastRequest(t.Context())
		require.NoError(t, err)
		require.True(t, ok)
		return r
	}
	saved := last()
	assert.NoError(t, saved.Validate(), "the form's saved settings are ones it accepts")

	// What a picture does not say comes back as the default, not as the
	// previous import left it.
	hires := writeParametersPNG(t, filepath.Join(dir, "hires.png"), "a fox\n"+
		"Steps: 6, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3, Size: 64x64, Model: tiny, "+
		"Denoising strength: 0.4, Hires upscale: 2, Hires upscaler: Lanczos")
	_, stderr, code = h.run("history", "import", hires)
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, 2.0, last().HiresScale)
	plain := writeParametersPNG(t, filepath.Join(dir, "plain.png"), "an owl\nSteps: 4, Seed: 5, Size: 64x64, Model: tiny")
	_, stderr, code = h.run("history", "import", plain)
	require.Equal(t, 0, code, stderr)
	assert.NotContains(t, stderr, "note:", "nothing was dropped")
	r := last()
	assert.Equal(t, "an owl", r.Prompt)
	assert.Zero(t, r.HiresScale)
	assert.Zero(t, r.HiresStrength)
	assert.Equal(t, def.Scheduler, r.Scheduler)
	assert.Empty(t, r.Schedule)
	assert.Equal(t, def.CFG, r.CFG)
}

// findFile is the path of the first file named name under root.
func findFile(t *testing.T, root, name string) string {
	t.Helper()
	var found string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error { //nolint:errcheck // not found fails below
		if err == nil && !d.IsDir() && d.Name() == name && found == "" {
			found = p
		}
		return nil
	})
	require.NotEmpty(t, found, "no %s under %s", name, root)
	return found
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	require.NoError(t, os.WriteFile(to, readFile(t, from), 0o644))
}

// TestA1111ModelHashAndLoRATagsRoundTrip: AUTOMATIC1111's parameters text
// with a "Model hash" and <lora:…> tags is imported (the checkpoint found by
// its hash under another name, the LoRA by its name in the library), the
// worker generates from it and writes both as A1111 does, and importing its
// PNG gives the same settings back.
func TestA1111ModelHashAndLoRATagsRoundTrip(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	// The tiny single-file checkpoint and the tiny LoRA, as files of the library under other names.
	_, stderr, code := h.run("generate", "--model", request.TinySingleFile, "--lora", request.TinyLoRA,
		"--prompt", "x", "--steps", "1", "--width", "64", "--height", "64", "--seed", "1")
	require.Equal(t, 0, code, stderr)
	lib := t.TempDir()
	ckpt, lora := filepath.Join(lib, "sdxl-renamed.safetensors"), filepath.Join(lib, "add-detail-xl.safetensors")
	copyFile(t, findFile(t, h.dir, "tiny-single-file-v2.safetensors"), ckpt)
	copyFile(t, findFile(t, h.dir, "tiny-lora-v2.safetensors"), lora)
	_, stderr, code = h.run("models", "add-folder", lib)
	require.Equal(t, 0, code, stderr)
	hash, err := library.ShortHash(ckpt)
	require.NoError(t, err)

	// A real A1111 v1.10 text, made to fit the tiny model (its hash, a small size).
	text := string(readFile(t, filepath.Join("..", "..", "core", "infotext", "testdata", "infotext", "a1111_model_hash_lora.txt")))
	text = strings.NewReplacer("Model hash: 31e35c80fc", "Model hash: "+hash, "Steps: 30", "Steps: 2",
		"Size: 1024x1024", "Size: 64x64", " <lora:missing_style:1>", "").Replace(strings.TrimSpace(text))
	imported := func(png string) infotext.ImportedSettings {
		t.Helper()
		out, stderr, code := h.run("history", "import", png, "--json")
		require.Equal(t, 0, code, stderr)
		var got infotext.ImportedSettings
		require.NoError(t, json.Unmarshal([]byte(out), &got), out)
		return got
	}
	first := imported(writeParametersPNG(t, filepath.Join(t.TempDir(), "a1111.png"), text))
	r := first.Request
	assert.Equal(t, ckpt, r.Model, "found by its Model hash")
	assert.Equal(t, []request.LoRA{{Path: lora, Weight: 0.8}}, r.LoRAs, "found by its tag's name")
	assert.Equal(t, "masterpiece, a lighthouse on a cliff at dusk, (dramatic lighting:1.2)", r.Prompt)
	assert.Empty(t, first.Notes)

	stdout, stderr, code := h.run("generate", "--model", r.Model, "--lora", lora+":0.8", "--prompt", r.Prompt,
		"--negative", r.NegativePrompt, "--steps", itoa(int64(r.Steps)), "--scheduler", r.Scheduler,
		"--schedule", r.Schedule, "--cfg", "7", "--seed", itoa(r.Seed), "--width", "64", "--height", "64")
	require.Equal(t, 0, code, stderr)
	png := strings.TrimSpace(stdout)
	params := pngText(t, png)["parameters"]
	loraHash, err := library.ShortHash(lora)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(params, r.Prompt+" <lora:add-detail-xl:0.8>\n"), params)
	assert.Contains(t, params, "Size: 64x64, Model hash: "+hash+", Model: sdxl-renamed, ")
	assert.Contains(t, params, `Lora hashes: "add-detail-xl: `+loraHash+`"`)

	again := imported(png)
	assert.Equal(t, r.Model, again.Request.Model)
	assert.Equal(t, r.LoRAs, again.Request.LoRAs)
	assert.Equal(t, r.Prompt, again.Request.Prompt)
	assert.Equal(t, r.Seed, again.Request.Seed)
	assert.Empty(t, again.Notes)
}

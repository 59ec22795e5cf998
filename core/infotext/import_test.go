package infotext

import (
	"encoding/json"
	"image/color"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/internal/pngtest"
	"atelier/core/library"
	"atelier/core/request"
)

func TestImportPNG(t *testing.T) {
	dir := t.TempDir()
	models := filepath.Join(dir, "models")
	require.NoError(t, os.MkdirAll(filepath.Join(models, "sdxl-base"), 0o755))

	// Our own chunk: exactly what the worker writes (the infotext golden).
	own, err := os.ReadFile(filepath.Join("testdata", "infotext", "atelier_own.txt"))
	require.NoError(t, err)
	p := filepath.Join(dir, "own.png")
	pngtest.Write(t, p, 64, 64, color.White, pngtest.Text("parameters", strings.TrimSpace(string(own))))
	base := request.DefaultRequest()
	base.Model = "/somewhere/else"
	got, err := ImportPNG(p, base, Models{Dir: models})
	require.NoError(t, err)
	assert.Equal(t, "a lighthouse", got.Request.Prompt)
	assert.Equal(t, 4, got.Request.Steps)
	assert.Equal(t, int64(7), got.Request.Seed)
	assert.Equal(t, 64, got.Request.Width)
	assert.Equal(t, "euler", got.Request.Scheduler)
	assert.Equal(t, request.TinyModel, got.Request.Model)
	assert.Empty(t, got.Notes)

	// AUTOMATIC1111's infotext, in an iTXt chunk as some tools write it.
	a1111, err := os.ReadFile(filepath.Join("testdata", "infotext", "a1111_full.txt"))
	require.NoError(t, err)
	var golden Infotext
	gb, err := os.ReadFile(filepath.Join("testdata", "infotext", "a1111_full.golden.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(gb, &golden))
	p = filepath.Join(dir, "a1111.png")
	pngtest.Write(t, p, 64, 64, color.White, pngtest.IText("parameters", string(a1111), true))
	got, err = ImportPNG(p, base, Models{Dir: models})
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
	pngtest.Write(t, p, 64, 64, color.White, pngtest.Text("parameters", "x\nSteps: 4, Seed: 1, Size: 64x64, Model: sdxl-base"))
	got, err = ImportPNG(p, base, Models{Dir: models})
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(models, "sdxl-base"), got.Request.Model)
	p = filepath.Join(dir, "unknown.png")
	pngtest.Write(t, p, 64, 64, color.White, pngtest.Text("parameters", "x\nSteps: 4, Seed: 1, Size: 64x64, Model: nowhere"))
	got, err = ImportPNG(p, base, Models{Dir: models})
	require.NoError(t, err)
	assert.Equal(t, base.Model, got.Request.Model)
	require.Len(t, got.Notes, 1)
	assert.Contains(t, got.Notes[0], "nowhere")

	p = filepath.Join(dir, "plain.png")
	pngtest.Write(t, p, 8, 8, color.White)
	_, err = ImportPNG(p, base, Models{Dir: models})
	assert.ErrorContains(t, err, "no generation settings")
}

func TestImportPNGKeepsOnlyWhatTheFormAccepts(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.png")
	pngtest.Write(t, p, 64, 64, color.White, pngtest.Text("parameters", "a lighthouse\n"+
		"Steps: 500, Sampler: Euler, CFG scale: nan, Seed: 18446744073709551615, Size: 5000x63, "+
		"Denoising strength: 1.5, Model: tiny, Loras: \"<lora:tiny-lora:9>\""))
	got, err := ImportPNG(p, request.DefaultRequest(), Models{})
	require.NoError(t, err)
	r := got.Request
	def := request.DefaultRequest()
	assert.Equal(t, "a lighthouse", r.Prompt)
	assert.Equal(t, def.Steps, r.Steps)
	assert.Equal(t, def.CFG, r.CFG)
	assert.Equal(t, def.Seed, r.Seed)
	assert.Equal(t, [2]int{def.Width, def.Height}, [2]int{r.Width, r.Height})
	assert.Zero(t, r.Strength)
	assert.Empty(t, r.LoRAs)
	assert.NoError(t, r.Validate(), "an import is always a request the form accepts")
	_, err = json.Marshal(got)
	assert.NoError(t, err, "no NaN survives to be saved")

	joined := strings.Join(got.Notes, "\n")
	for _, want := range []string{
		"steps must be between 1 and 150, got 500; keeping 30",
		"cfg must be between 0 and 30, got NaN; keeping 5",
		"Seed 18446744073709551615 is out of range; keeping a random seed",
		"width must be a multiple of 8 between 64 and 4096, got 5000; keeping 1024",
		"height must be a multiple of 8 between 64 and 4096, got 63; keeping 1024",
		"strength must be above 0 and at most 1, got 1.5; keeping 0",
		"loras[0].weight must be between -5 and 5, got 9; keeping none",
	} {
		assert.Contains(t, joined, want)
	}
	assert.Len(t, got.Notes, 7, joined)
}

func TestImportPNGTakesDefaultsForWhatThePictureDoesNotSay(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "plain.png")
	pngtest.Write(t, p, 64, 64, color.White, pngtest.Text("parameters", "a fox\nSteps: 4, Seed: 1, Size: 64x64, Model: tiny"))
	// The form as an earlier import with every feature left it.
	base := request.DefaultRequest()
	base.Model, base.BatchSize, base.PreviewEvery = "/models/sdxl", 4, 2
	base.Steps, base.CFG, base.Scheduler, base.Schedule, base.NegativePrompt = 50, 9, "dpmpp_2m", "karras", "fog"
	base.HiresScale, base.HiresSteps, base.HiresStrength = 2, 10, 0.3
	base.LoRAs, base.VAE, base.Refiner, base.RefinerSwitch = []request.LoRA{{Path: request.TinyLoRA, Weight: 1}}, request.TinyVAE, request.TinyRefiner, 0.7
	base.InitImage, base.Strength, base.MaskImage, base.MaskBlur = "in.png", 0.5, "mask.png", request.IntPtr(8)
	base.Upscaler, base.Upscale = request.LanczosUpscaler, 3

	got, err := ImportPNG(p, base, Models{})
	require.NoError(t, err)
	want := request.DefaultRequest()
	want.Prompt, want.Steps, want.Seed, want.Width, want.Height = "a fox", 4, 1, 64, 64
	want.BatchSize, want.PreviewEvery = 4, 2 // the form's own choices
	assert.Equal(t, want, got.Request)
	assert.Empty(t, got.Notes)

	p = filepath.Join(dir, "nomodel.png")
	pngtest.Write(t, p, 64, 64, color.White, pngtest.Text("parameters", "a fox\nSteps: 4, Seed: 1, Size: 64x64"))
	got, err = ImportPNG(p, base, Models{})
	require.NoError(t, err)
	assert.Equal(t, "/models/sdxl", got.Request.Model)
	assert.Equal(t, []string{"the picture names no model; keeping /models/sdxl"}, got.Notes)
}

func TestImportPNGDropsControlCharactersFromThePrompts(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ctl.png")
	pngtest.Write(t, p, 64, 64, color.White, pngtest.IText("parameters",
		"a light\x01house\n\tat dusk\nNegative prompt: fog\x1b[0m\nSteps: 4, Seed: 1, Size: 64x64, Model: tiny", false))
	got, err := ImportPNG(p, request.DefaultRequest(), Models{})
	require.NoError(t, err)
	assert.Equal(t, "a lighthouse\nat dusk", got.Request.Prompt)
	assert.Equal(t, "fog[0m", got.Request.NegativePrompt)
	assert.NoError(t, got.Request.Validate())
	assert.Len(t, got.Notes, 2, "%v", got.Notes)
	assert.Contains(t, got.Notes[0], "prompt: 1 control character(s) removed")
}

// TestImportPNGFindsA1111ModelAndLoRAsInTheLibrary: AUTOMATIC1111's "Model
// hash" finds a checkpoint that was renamed, and its <lora:…> tags become the
// request's LoRAs when the library has them, or notes when it has not.
func TestImportPNGFindsA1111ModelAndLoRAsInTheLibrary(t *testing.T) {
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "sdxl-renamed.safetensors")
	require.NoError(t, os.WriteFile(ckpt, []byte("checkpoint bytes"), 0o644))
	hash, err := library.ShortHash(ckpt)
	require.NoError(t, err)
	lora := filepath.Join(dir, "add-detail-xl.safetensors")
	lib := &library.Library{Entries: []library.LibraryEntry{
		{Path: ckpt, Name: "sdxl-renamed", Kind: library.KindCheckpoint, Format: "safetensors"},
		{Path: lora, Name: "add-detail-xl", Kind: library.KindLoRA, Format: "safetensors"},
	}}
	raw, err := os.ReadFile(filepath.Join("testdata", "infotext", "a1111_model_hash_lora.txt"))
	require.NoError(t, err)
	text := strings.Replace(strings.TrimSpace(string(raw)), "Model hash: 31e35c80fc", "Model hash: "+hash, 1)
	p := filepath.Join(dir, "a1111.png")
	pngtest.Write(t, p, 8, 8, color.White, pngtest.Text("parameters", text))
	base := request.DefaultRequest()
	base.Model = "/somewhere/else"

	got, err := ImportPNG(p, base, Models{Library: lib})
	require.NoError(t, err)
	r := got.Request
	assert.Equal(t, ckpt, r.Model, "found by its hash: the name differs")
	assert.Equal(t, []request.LoRA{{Path: lora, Weight: 0.8}}, r.LoRAs)
	assert.Equal(t, "masterpiece, a lighthouse on a cliff at dusk, (dramatic lighting:1.2) <lora:missing_style:1>", r.Prompt,
		"a found LoRA's tag leaves the prompt; a missing one stays")
	require.Len(t, got.Notes, 1, "%v", got.Notes)
	assert.Contains(t, got.Notes[0], `LoRA "missing_style" (weight 1) is not in the model library`)

	// Without hashing (the window's first pass), the name alone does not find it; ByHash does.
	models := Models{Library: lib, NoHashing: true}
	got, err = ImportPNG(p, base, models)
	require.NoError(t, err)
	assert.Equal(t, base.Model, got.Request.Model)
	assert.Contains(t, strings.Join(got.Notes, "\n"), `model "sd_xl_base_1.0" (hash `+hash+`) is not in the models folder or the model library`)
	found, ok := models.ByHash(hash)
	assert.True(t, ok)
	assert.Equal(t, ckpt, found)

	// By name, with no hash at all; and Atelier's own generated models by theirs.
	for name, want := range map[string]string{"sdxl-renamed": ckpt, request.TinyModel: request.TinyModel, request.TinySingleFile: request.TinySingleFile} {
		pngtest.Write(t, p, 8, 8, color.White, pngtest.Text("parameters", "x\nSteps: 4, Seed: 1, Size: 64x64, Model: "+name))
		got, err = ImportPNG(p, base, Models{Library: lib})
		require.NoError(t, err)
		assert.Equal(t, want, got.Request.Model, name)
		assert.Empty(t, got.Notes, name)
	}
}

package infotext

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"atelier/core/request"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestInfotextGolden parses each sample, compares with its golden JSON, and
// checks that parse → format → parse gives the same result.
func TestInfotextGolden(t *testing.T) {
	samples, err := filepath.Glob("testdata/infotext/*.txt")
	require.NoError(t, err)
	require.NotEmpty(t, samples, "no infotext samples found")
	for _, path := range samples {
		t.Run(filepath.Base(path), func(t *testing.T) {
			raw, err := os.ReadFile(path)
			require.NoError(t, err)
			got := ParseInfotext(string(raw))
			js, err := json.MarshalIndent(got, "", "  ")
			require.NoError(t, err)
			golden := strings.TrimSuffix(path, ".txt") + ".golden.json"
			if *update {
				require.NoError(t, os.WriteFile(golden, append(js, '\n'), 0o644))
			}
			want, err := os.ReadFile(golden)
			require.NoError(t, err, "missing golden file: run go test ./core -run TestInfotextGolden -update")
			assert.JSONEq(t, string(want), string(js))

			again := ParseInfotext(got.String())
			assert.Equal(t, got, again, "parse → format → parse changed the infotext")
		})
	}
}

func TestInfotextApplyTo(t *testing.T) {
	raw, err := os.ReadFile("testdata/infotext/a1111_full.txt")
	require.NoError(t, err)
	req := request.DefaultRequest()
	notes := ParseInfotext(string(raw)).ApplyTo(&req)
	assert.Empty(t, notes)
	assert.Equal(t, "blurry, lowres, watermark", req.NegativePrompt)
	assert.Equal(t, 30, req.Steps)
	assert.Equal(t, 7.0, req.CFG)
	assert.Equal(t, int64(1234567890), req.Seed)
	assert.Equal(t, 1024, req.Width)
	assert.Equal(t, "dpmpp_2m", req.Scheduler)
	assert.NoError(t, req.Validate())
}

func TestInfotextApplyToReportsBadValues(t *testing.T) {
	it := ParseInfotext("cat\nSteps: many, Sampler: Heun++, Size: big, Seed: x")
	req := request.DefaultRequest()
	notes := it.ApplyTo(&req)
	assert.Len(t, notes, 4)
	assert.Equal(t, 30, req.Steps, "a bad value must leave the field as it was")
	assert.Equal(t, "euler", req.Scheduler)
}

func TestInfotextQuotesSpecialValues(t *testing.T) {
	it := Infotext{Prompt: "p", Params: []Param{{"Steps", "1"}, {"Lora hashes", "x: 1, y: 2"}, {"Seed", "3"}}}
	s := it.String()
	assert.Contains(t, s, `Lora hashes: "x: 1, y: 2"`)
	assert.Equal(t, it, ParseInfotext(s))
}

func TestInfotextApplyToFeatures(t *testing.T) {
	raw, err := os.ReadFile("testdata/infotext/atelier_features.txt")
	require.NoError(t, err)
	req := request.DefaultRequest()
	notes := ParseInfotext(string(raw)).ApplyTo(&req)
	assert.Equal(t, "dpmpp_2m", req.Scheduler)
	assert.Equal(t, "karras", req.Schedule)
	assert.Equal(t, 0.5, req.Strength)
	require.NotNil(t, req.MaskBlur)
	assert.Equal(t, 4, *req.MaskBlur)
	assert.Equal(t, request.TinyVAE, req.VAE)
	assert.Equal(t, []request.LoRA{{Path: request.TinyLoRA, Weight: 0.8}}, req.LoRAs)
	assert.Equal(t, "a lighthouse", req.Prompt, "the tags the worker adds to the prompt leave it")
	assert.Equal(t, request.TinyRefiner, req.Refiner)
	assert.Equal(t, 0.8, req.RefinerSwitch)
	assert.Equal(t, request.LanczosUpscaler, req.Upscaler)
	assert.Equal(t, 2.0, req.Upscale)
	require.Len(t, notes, 1, "%v", notes)
	assert.Contains(t, notes[0], "ControlNet 0 (canny, tiny-controlnet) needs its control image")
}

func TestInfotextApplyToA1111LorasAndHires(t *testing.T) {
	raw, err := os.ReadFile("testdata/infotext/a1111_lora_hires.txt")
	require.NoError(t, err)
	req := request.DefaultRequest()
	notes := ParseInfotext(string(raw)).ApplyTo(&req)
	assert.Equal(t, "dpmpp_2m", req.Scheduler, "the old folded name DPM++ 2M Karras")
	assert.Equal(t, "karras", req.Schedule)
	assert.Equal(t, []request.LoRA{{Path: request.TinyLoRA, Weight: -1}}, req.LoRAs, "the tiny LoRA's tag comes back as a LoRA")
	assert.Equal(t, "portrait of a knight <lora:detail_tweaker:0.5>, oil painting", req.Prompt,
		"an applied tag leaves the prompt; an unknown one stays")
	assert.Empty(t, req.VAE)
	assert.Empty(t, req.Upscaler)
	// The hires pass comes back as one, with its strength (not img2img's).
	assert.Equal(t, 1.5, req.HiresScale)
	assert.Equal(t, 0.35, req.HiresStrength)
	assert.Zero(t, req.Strength)
	assert.NoError(t, req.Validate())
	joined := strings.Join(notes, "\n")
	assert.Contains(t, joined, `LoRA "detail_tweaker" (weight 0.5)`)
	assert.Contains(t, joined, `VAE "sdxl_vae.safetensors"`)
	assert.Contains(t, joined, `Hires upscaler "4x-UltraSharp": Atelier's hires pass enlarges with Lanczos`)
}

func TestInfotextApplyToOurHiresPass(t *testing.T) {
	req := request.DefaultRequest()
	notes := ParseInfotext("a fox\nSteps: 20, Sampler: Euler, CFG scale: 5, Seed: 3, Size: 64x64, " +
		"Denoising strength: 0.4, Hires upscale: 2, Hires steps: 8, Hires upscaler: Lanczos").ApplyTo(&req)
	assert.Empty(t, notes)
	assert.Equal(t, [3]float64{2, 8, 0.4}, [3]float64{req.HiresScale, float64(req.HiresSteps), req.HiresStrength})
	assert.Zero(t, req.Strength)

	req = request.DefaultRequest()
	notes = ParseInfotext("a fox\nSteps: 20, Size: 832x1216, Seed: 3, Denoising strength: 0.45, Hires resize: 1248x1824").ApplyTo(&req)
	assert.Empty(t, notes)
	assert.Equal(t, 1.5, req.HiresScale, "Hires resize to a size is the factor of that size")
	assert.Equal(t, 0.45, req.HiresStrength)

	req = request.DefaultRequest()
	ParseInfotext("a fox\nSteps: 20, Seed: 3, Denoising strength: 0.6").ApplyTo(&req)
	assert.Equal(t, 0.6, req.Strength, "without a hires pass the strength is img2img's")
	assert.Zero(t, req.HiresScale)
}

func TestInfotextApplyToEveryA1111Sampler(t *testing.T) {
	for id, name := range request.SamplerNames {
		req := request.DefaultRequest()
		notes := ParseInfotext("p\nSteps: 4, Sampler: " + name + ", Schedule type: Exponential, Seed: 1").ApplyTo(&req)
		assert.Empty(t, notes, name)
		assert.Equal(t, id, req.Scheduler, name)
		assert.Equal(t, "exponential", req.Schedule, name)
	}
	assert.Len(t, request.SamplerNames, len(request.Schedulers))
	for _, s := range request.Schedulers {
		assert.Contains(t, request.SamplerNames, s)
	}
}

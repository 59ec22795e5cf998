package request

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"atelier/core/failure"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// featureBase is a valid request that the cases below change one thing of.
func featureBase() Request {
	r := DefaultRequest()
	r.Prompt = "a lighthouse"
	r.Width, r.Height, r.Steps = 64, 64, 4
	return r
}

func withCN(mod func(*ControlNet)) func(*Request) {
	return func(r *Request) {
		c := DefaultControlNet()
		c.Image = "edges.png"
		mod(&c)
		r.ControlNets = append(r.ControlNets, c)
	}
}

func TestFeatureValidation(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		name  string
		mod   func(*Request)
		field string // "" = valid
	}{
		// Sampling.
		{"every scheduler", func(r *Request) { r.Scheduler = "unipc" }, ""},
		{"unknown scheduler", func(r *Request) { r.Scheduler = "plms" }, "scheduler"},
		{"karras", func(r *Request) { r.Scheduler, r.Schedule = "dpmpp_2m", "karras" }, ""},
		{"beta", func(r *Request) { r.Schedule = "beta" }, ""},
		{"unknown schedule", func(r *Request) { r.Schedule = "polyexponential" }, "schedule"},
		// LoRA.
		{"lora", func(r *Request) { r.LoRAs = []LoRA{{Path: "style.safetensors", Weight: 0.8}} }, ""},
		{"lora negative weight", func(r *Request) { r.LoRAs = []LoRA{{Path: TinyLoRA, Weight: -5}} }, ""},
		{"second lora weight 6", func(r *Request) {
			r.LoRAs = []LoRA{{Path: TinyLoRA, Weight: 1}, {Path: TinyLoRA, Weight: 6}}
		}, "loras[1].weight"},
		{"lora weight NaN", func(r *Request) { r.LoRAs = []LoRA{{Path: TinyLoRA, Weight: nan}} }, "loras[0].weight"},
		{"lora empty path", func(r *Request) { r.LoRAs = []LoRA{{Path: " ", Weight: 1}} }, "loras[0].path"},
		{"lora ckpt", func(r *Request) { r.LoRAs = []LoRA{{Path: "x.ckpt", Weight: 1}} }, "loras[0].path"},
		{"lora pt", func(r *Request) { r.LoRAs = []LoRA{{Path: TinyLoRA, Weight: 1}, {Path: "x.PT", Weight: 1}} }, "loras[1].path"},
		{"lora pth", func(r *Request) { r.LoRAs = []LoRA{{Path: "x.pth", Weight: 1}} }, "loras[0].path"},
		{"lora bin", func(r *Request) { r.LoRAs = []LoRA{{Path: "adapter_model.bin", Weight: 1}} }, "loras[0].path"},
		{"17 loras", func(r *Request) { r.LoRAs = make([]LoRA, MaxLoRAs+1); fillLoRAs(r.LoRAs) }, "loras"},
		// ControlNet.
		{"controlnet", withCN(func(*ControlNet) {}), ""},
		{"controlnet type", withCN(func(c *ControlNet) { c.Type = "segment" }), "controlnets[0].type"},
		{"every controlnet type", withCN(func(c *ControlNet) { c.Type = "softedge" }), ""},
		{"controlnet model pickle", withCN(func(c *ControlNet) { c.Model = "cn.pth" }), "controlnets[0].model"},
		{"controlnet model empty", withCN(func(c *ControlNet) { c.Model = "" }), "controlnets[0].model"},
		{"controlnet image", withCN(func(c *ControlNet) { c.Image = "" }), "controlnets[0].image"},
		{"controlnet scale 0", withCN(func(c *ControlNet) { c.Scale = 0 }), ""},
		{"controlnet scale 2.5", withCN(func(c *ControlNet) { c.Scale = 2.5 }), "controlnets[0].scale"},
		{"controlnet scale negative", withCN(func(c *ControlNet) { c.Scale = -0.1 }), "controlnets[0].scale"},
		{"controlnet start negative", withCN(func(c *ControlNet) { c.Start = -0.1 }), "controlnets[0].start"},
		{"controlnet end before start", withCN(func(c *ControlNet) { c.Start, c.End = 0.6, 0.4 }), "controlnets[0].end"},
		{"controlnet end equals start", withCN(func(c *ControlNet) { c.Start, c.End = 0.5, 0.5 }), "controlnets[0].end"},
		{"controlnet end above 1", withCN(func(c *ControlNet) { c.End = 1.1 }), "controlnets[0].end"},
		{"controlnet window", withCN(func(c *ControlNet) { c.Start, c.End = 0.2, 0.7 }), ""},
		{"canny low 256", withCN(func(c *ControlNet) { c.CannyLow = 256 }), "controlnets[0].canny_low"},
		{"canny high below low", withCN(func(c *ControlNet) { c.CannyLow, c.CannyHigh = 150, 100 }), "controlnets[0].canny_high"},
		{"canny high 300", withCN(func(c *ControlNet) { c.CannyHigh = 300 }), "controlnets[0].canny_high"},
		{"canny 0..255", withCN(func(c *ControlNet) { c.CannyLow, c.CannyHigh = 0, 255 }), ""},
		{"second controlnet", func(r *Request) {
			withCN(func(*ControlNet) {})(r)
			withCN(func(c *ControlNet) { c.Scale = 3 })(r)
		}, "controlnets[1].scale"},
		{"5 controlnets", func(r *Request) {
			for range MaxControlNets + 1 {
				withCN(func(*ControlNet) {})(r)
			}
		}, "controlnets"},
		// Refiner.
		{"refiner", func(r *Request) { r.Refiner, r.RefinerSwitch = TinyRefiner, 0.8 }, ""},
		{"refiner default switch", func(r *Request) { r.Refiner = TinyRefiner }, ""},
		{"refiner switch 1", func(r *Request) { r.Refiner, r.RefinerSwitch = TinyRefiner, 1 }, "refiner_switch"},
		{"refiner switch negative", func(r *Request) { r.Refiner, r.RefinerSwitch = TinyRefiner, -0.2 }, "refiner_switch"},
		{"refiner pickle", func(r *Request) { r.Refiner = "refiner.ckpt" }, "refiner"},
		// VAE.
		{"vae", func(r *Request) { r.VAE = "sdxl-vae.safetensors" }, ""},
		{"vae pickle", func(r *Request) { r.VAE = "vae.pt" }, "vae"},
		// img2img and inpainting.
		{"img2img", func(r *Request) { r.InitImage, r.Strength = "in.png", 0.5 }, ""},
		{"strength above 1", func(r *Request) { r.InitImage, r.Strength = "in.png", 1.5 }, "strength"},
		{"strength negative", func(r *Request) { r.InitImage, r.Strength = "in.png", -0.5 }, "strength"},
		{"strength below one step", func(r *Request) { r.InitImage, r.Strength = "in.png", 0.1 }, "strength"},
		{"inpaint", func(r *Request) {
			r.InitImage, r.MaskImage, r.MaskBlur, r.MaskPadding = "in.png", "mask.png", IntPtr(0), 32
		}, ""},
		{"mask without init image", func(r *Request) { r.MaskImage = "mask.png" }, "mask_image"},
		{"mask blur 65", func(r *Request) { r.InitImage, r.MaskImage, r.MaskBlur = "in.png", "m.png", IntPtr(65) }, "mask_blur"},
		{"mask blur negative", func(r *Request) { r.InitImage, r.MaskImage, r.MaskBlur = "in.png", "m.png", IntPtr(-1) }, "mask_blur"},
		{"mask padding too big", func(r *Request) {
			r.InitImage, r.MaskImage, r.MaskPadding = "in.png", "m.png", MaxMaskPadding+1
		}, "mask_padding"},
		// Upscale.
		{"lanczos", func(r *Request) { r.Upscaler, r.Upscale = LanczosUpscaler, 2 }, ""},
		{"esrgan", func(r *Request) { r.Upscaler, r.Upscale = "4x.safetensors", 4 }, ""},
		{"upscale 5", func(r *Request) { r.Upscaler, r.Upscale = LanczosUpscaler, 5 }, "upscale"},
		{"upscale 0.5", func(r *Request) { r.Upscaler, r.Upscale = LanczosUpscaler, 0.5 }, "upscale"},
		{"upscaler pickle", func(r *Request) { r.Upscaler = "4x.pth" }, "upscaler"},
		{"upscaler not a model", func(r *Request) { r.Upscaler = "bicubic" }, "upscaler"},
		// Hires fix.
		{"hires", func(r *Request) { r.HiresScale, r.HiresSteps, r.HiresStrength = 2, 10, 0.4 }, ""},
		{"hires default steps and strength", func(r *Request) { r.HiresScale = 1.5 }, ""},
		{"hires scale 0.5", func(r *Request) { r.HiresScale = 0.5 }, "hires_scale"},
		{"hires scale 5", func(r *Request) { r.HiresScale = 5 }, "hires_scale"},
		{"hires past the largest size", func(r *Request) { r.Width, r.HiresScale = 2048, 2.5 }, "hires_scale"},
		{"hires with img2img", func(r *Request) { r.InitImage, r.HiresScale = "in.png", 2 }, "hires_scale"},
		{"hires steps 151", func(r *Request) { r.HiresScale, r.HiresSteps = 2, 151 }, "hires_steps"},
		{"hires strength 1.5", func(r *Request) { r.HiresScale, r.HiresStrength = 2, 1.5 }, "hires_strength"},
		// Upscale only.
		{"upscale only", func(r *Request) { r.UpscaleOnly, r.InitImage, r.Upscaler = true, "in.png", LanczosUpscaler }, ""},
		{"upscale only without a picture", func(r *Request) { r.UpscaleOnly, r.Upscaler = true, LanczosUpscaler }, "upscale_only"},
		{"upscale only without an upscaler", func(r *Request) { r.UpscaleOnly, r.InitImage = true, "in.png" }, "upscale_only"},
		// Single-file model.
		{"single-file model", func(r *Request) { r.Model = "/models/sdxl.safetensors" }, ""},
		{"pickle model", func(r *Request) { r.Model = "/models/sdxl.ckpt" }, "model"},
		// Batch size stays 1..8.
		{"batch 8", func(r *Request) { r.BatchSize = 8 }, ""},
		{"batch 9", func(r *Request) { r.BatchSize = 9 }, "batch_size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := featureBase()
			tc.mod(&r)
			err := r.Validate()
			if tc.field == "" {
				assert.NoError(t, err)
				return
			}
			v, ok := AsValidation(err)
			require.True(t, ok, "want a validation error naming %s, got %v", tc.field, err)
			fe := v.Field(tc.field)
			require.NotNil(t, fe, "want an error naming %s, got %v", tc.field, err)
			assert.NotEmpty(t, fe.Message)
			assert.Len(t, v.Fields, 1, "only %s is wrong: %v", tc.field, err)
		})
	}
}

func fillLoRAs(l []LoRA) {
	for i := range l {
		l[i] = LoRA{Path: TinyLoRA, Weight: 1}
	}
}

func TestPickleRefusalNamesTheFile(t *testing.T) {
	r := featureBase()
	r.LoRAs = []LoRA{{Path: TinyLoRA, Weight: 1}, {Path: "/loras/old.ckpt", Weight: 1}}
	v, ok := AsValidation(r.Validate())
	require.True(t, ok)
	fe := v.Field("loras[1].path")
	require.NotNil(t, fe)
	assert.Contains(t, fe.Message, "/loras/old.ckpt")
	assert.Contains(t, fe.Message, "pickle")
}

func TestControlNetJSONFillsDefaults(t *testing.T) {
	var c ControlNet
	require.NoError(t, json.Unmarshal([]byte(`{"type":"depth","model":"tiny-controlnet","image":"/d.png"}`), &c))
	assert.Equal(t, ControlNet{Type: "depth", Model: TinyControlNet, Image: "/d.png", Scale: 1, Start: 0, End: 1,
		CannyLow: DefaultCannyLow, CannyHigh: DefaultCannyHigh}, c)
	var l LoRA
	require.NoError(t, json.Unmarshal([]byte(`{"path":"tiny-lora"}`), &l))
	assert.Equal(t, 1.0, l.Weight)
}

func TestResolvePathsMakesFilesAbsoluteAndNamesMissingOnes(t *testing.T) {
	dir := t.TempDir()
	lora := filepath.Join(dir, "style.safetensors")
	img := filepath.Join(dir, "in.png")
	for _, p := range []string{lora, img} {
		require.NoError(t, os.WriteFile(p, []byte("x"), 0o644))
	}
	t.Chdir(dir)
	r := featureBase()
	r.LoRAs = []LoRA{{Path: TinyLoRA, Weight: 1}, {Path: "style.safetensors", Weight: 1}}
	r.InitImage = "in.png"
	r.Upscaler = LanczosUpscaler
	r.VAE = TinyVAE
	require.NoError(t, r.ResolvePaths())
	assert.Equal(t, TinyLoRA, r.LoRAs[0].Path)
	assert.Equal(t, lora, r.LoRAs[1].Path)
	assert.Equal(t, img, r.InitImage)
	assert.Equal(t, LanczosUpscaler, r.Upscaler)
	assert.Equal(t, TinyVAE, r.VAE)

	r.ControlNets = []ControlNet{DefaultControlNet()}
	r.ControlNets[0].Image = "missing.png"
	err := r.ResolvePaths()
	var jerr *failure.JobError
	require.ErrorAs(t, err, &jerr)
	assert.Equal(t, "controlnets[0].image", jerr.Field)
	assert.Contains(t, jerr.Message, "missing.png")
}

func TestExpandBatchCountStepsTheSeedByTheBatchSize(t *testing.T) {
	r := featureBase()
	r.Seed, r.BatchSize = 100, 3
	jobs, err := ExpandBatchCount(r, 3)
	require.NoError(t, err)
	require.Len(t, jobs, 3)
	assert.Equal(t, []int64{100, 103, 106}, []int64{jobs[0].Seed, jobs[1].Seed, jobs[2].Seed})

	r.Seed = -1
	jobs, err = ExpandBatchCount(r, 2)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, jobs[0].Seed, int64(0), "a random seed is resolved once")
	assert.Equal(t, jobs[0].Seed+3, jobs[1].Seed)

	_, err = ExpandBatchCount(r, 0)
	v, ok := AsValidation(err)
	require.True(t, ok)
	assert.NotNil(t, v.Field("batch_count"))
	r.Seed = MaxSeed - 4
	_, err = ExpandBatchCount(r, 2)
	v, ok = AsValidation(err)
	require.True(t, ok)
	assert.NotNil(t, v.Field("seed"))
}

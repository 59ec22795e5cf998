package main

import (
	"bytes"
	"flag"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/protocol"
	"atelier/core/request"
)

func buildFlags(t *testing.T, args ...string) (request.Request, *requestFlags, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	rf := addRequestFlags(fs)
	require.NoError(t, fs.Parse(append([]string{"--prompt", "p", "--width", "64", "--height", "64", "--steps", "4"}, args...)))
	r, err := rf.build()
	return r, rf, err
}

func TestRequestFlagsSetEveryFeature(t *testing.T) {
	r, rf, err := buildFlags(t,
		"--scheduler", "dpmpp_2m", "--schedule", "karras",
		"--lora", "tiny-lora:0.8", "--lora", "/l/style.safetensors:-1.5", "--lora", "/l/plain.safetensors",
		"--controlnet", "type=canny,model=tiny-controlnet,image=/c.png,scale=0.5,start=0.1,end=0.9,low=50,high=150",
		"--controlnet", "type=depth,model=/cn/depth,image=/d.png",
		"--refiner", "tiny-refiner", "--refiner-switch", "0.7", "--vae", "tiny-vae",
		"--init-image", "/i.png", "--strength", "0.5", "--mask", "/m.png", "--mask-blur", "0", "--mask-padding", "32",
		"--upscaler", "lanczos", "--upscale", "1.5", "--batch-size", "2", "--batch-count", "3")
	require.NoError(t, err)
	assert.Equal(t, "dpmpp_2m", r.Scheduler)
	assert.Equal(t, "karras", r.Schedule)
	assert.Equal(t, []request.LoRA{{Path: "tiny-lora", Weight: 0.8}, {Path: "/l/style.safetensors", Weight: -1.5},
		{Path: "/l/plain.safetensors", Weight: 1}}, r.LoRAs)
	assert.Equal(t, []request.ControlNet{
		{Type: "canny", Model: "tiny-controlnet", Image: "/c.png", Scale: 0.5, Start: 0.1, End: 0.9, CannyLow: 50, CannyHigh: 150},
		{Type: "depth", Model: "/cn/depth", Image: "/d.png", Scale: 1, Start: 0, End: 1, CannyLow: 100, CannyHigh: 200},
	}, r.ControlNets)
	assert.Equal(t, "tiny-refiner", r.Refiner)
	assert.Equal(t, 0.7, r.RefinerSwitch)
	assert.Equal(t, "tiny-vae", r.VAE)
	assert.Equal(t, "/i.png", r.InitImage)
	assert.Equal(t, 0.5, r.Strength)
	assert.Equal(t, "/m.png", r.MaskImage)
	require.NotNil(t, r.MaskBlur)
	assert.Equal(t, 0, *r.MaskBlur)
	assert.Equal(t, 32, r.MaskPadding)
	assert.Equal(t, "lanczos", r.Upscaler)
	assert.Equal(t, 1.5, r.Upscale)
	assert.Equal(t, 2, r.BatchSize)
	assert.Equal(t, 3, rf.count())
}

func TestRequestFlagsFillFeatureDefaultsOnlyWithTheirFeature(t *testing.T) {
	r, rf, err := buildFlags(t)
	require.NoError(t, err)
	assert.Zero(t, r.RefinerSwitch)
	assert.Zero(t, r.Strength)
	assert.Nil(t, r.MaskBlur)
	assert.Zero(t, r.Upscale)
	assert.Equal(t, 1, rf.count())

	r, _, err = buildFlags(t, "--refiner", "tiny-refiner", "--init-image", "/i.png", "--mask", "/m.png", "--upscaler", "lanczos")
	require.NoError(t, err)
	assert.Equal(t, request.DefaultRefinerSwitch, r.RefinerSwitch)
	assert.Equal(t, request.DefaultStrength, r.Strength)
	require.NotNil(t, r.MaskBlur)
	assert.Equal(t, request.DefaultMaskBlur, *r.MaskBlur)
	assert.Equal(t, request.DefaultUpscale, r.Upscale)
}

func TestRequestFlagErrorsNameTheFlag(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		field string
		want  []string
	}{
		{[]string{"--lora", "tiny-lora:6"}, "loras[0].weight", []string{"--lora", "loras[0].weight", "between -5 and 5"}},
		{[]string{"--lora", "tiny-lora", "--lora", "/old/x.ckpt:1"}, "loras[1].path", []string{"--lora", "/old/x.ckpt", "pickle"}},
		{[]string{"--controlnet", "type=canny,model=tiny-controlnet,image=/c.png,start=0.6,end=0.4"}, "controlnets[0].end", []string{"--controlnet", "controlnets[0].end"}},
		{[]string{"--controlnet", "type=segment,model=tiny-controlnet,image=/c.png"}, "controlnets[0].type", []string{"--controlnet", "segment"}},
		{[]string{"--schedule", "poly"}, "schedule", []string{"--schedule"}},
		{[]string{"--scheduler", "plms"}, "scheduler", []string{"--scheduler"}},
		{[]string{"--refiner", "tiny-refiner", "--refiner-switch", "1"}, "refiner_switch", []string{"--refiner-switch"}},
		{[]string{"--refiner-switch", "0.5"}, "refiner_switch", []string{"--refiner-switch", "without --refiner"}},
		{[]string{"--vae", "vae.pt"}, "vae", []string{"--vae", "pickle"}},
		{[]string{"--init-image", "/i.png", "--strength", "1.5"}, "strength", []string{"--strength"}},
		{[]string{"--init-image", "/i.png", "--strength", "0"}, "strength", []string{"--strength", "above 0"}},
		{[]string{"--strength", "0.5"}, "strength", []string{"--strength", "without --init-image"}},
		{[]string{"--mask", "/m.png"}, "mask_image", []string{"--mask", "init image"}},
		{[]string{"--init-image", "/i.png", "--mask", "/m.png", "--mask-blur", "99"}, "mask_blur", []string{"--mask-blur"}},
		{[]string{"--init-image", "/i.png", "--mask", "/m.png", "--mask-padding", "5000"}, "mask_padding", []string{"--mask-padding"}},
		{[]string{"--upscaler", "lanczos", "--upscale", "5"}, "upscale", []string{"--upscale", "between 1 and 4"}},
		{[]string{"--upscaler", "4x.pth"}, "upscaler", []string{"--upscaler", "pickle"}},
		{[]string{"--hires", "0.5"}, "hires_scale", []string{"--hires", "between 1 and 4"}},
		{[]string{"--hires", "2", "--init-image", "/i.png"}, "hires_scale", []string{"--hires", "text-to-image"}},
		{[]string{"--hires-steps", "10"}, "hires_steps", []string{"--hires-steps", "without --hires"}},
		{[]string{"--hires", "2", "--hires-strength", "0"}, "hires_strength", []string{"--hires-strength", "above 0"}},
		{[]string{"--upscale-only", "--upscaler", "lanczos"}, "upscale_only", []string{"--upscale-only", "init image"}},
		{[]string{"--upscale-only", "--init-image", "/i.png"}, "upscale_only", []string{"--upscale-only", "upscaler"}},
		{[]string{"--batch-size", "9"}, "batch_size", []string{"--batch-size"}},
		{[]string{"--batch-count", "0"}, "batch_count", []string{"--batch-count"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, _, err := buildFlags(t, tc.args...)
			require.Error(t, err)
			v, ok := request.AsValidation(err)
			require.True(t, ok, "the error must unwrap to a validation error: %v", err)
			assert.NotNil(t, v.Field(tc.field), "want %s in %v", tc.field, err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestMalformedFeatureFlagsAreRefusedByTheParser(t *testing.T) {
	for _, args := range [][]string{
		{"--controlnet", "type=canny,image=/c.png"},                    // no model
		{"--controlnet", "type=canny,model=tiny-controlnet"},           // no image
		{"--controlnet", "type=canny,model=m,image=/c.png,scale=lots"}, // not a number
		{"--controlnet", "type=canny,model=m,image=/c.png,weight=1"},   // unknown key
		{"--lora", ":0.5"}, // no path
	} {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		addRequestFlags(fs)
		err := fs.Parse(args)
		require.Error(t, err, "%v", args)
		assert.Contains(t, err.Error(), strings.TrimPrefix(args[0], "--"), "the parser's error names the flag")
	}
}

func TestEveryFeatureFieldHasAFlag(t *testing.T) {
	for _, field := range []string{"schedule", "loras[3].weight", "controlnets[0].canny_low", "refiner", "refiner_switch",
		"vae", "init_image", "strength", "mask_image", "mask_blur", "mask_padding", "upscaler", "upscale", "batch_count",
		"hires_scale", "hires_steps", "hires_strength"} {
		assert.True(t, strings.HasPrefix(flagName(field), "--"), "%s has no flag", field)
	}
}

func TestProgressShowsTheBaseAndRefinerStages(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf)
	p.refiner = true
	for i := 0; i <= 3; i++ {
		p.event(protocol.Progress{Stage: "denoising", Step: i, Total: 3})
	}
	for i := 0; i <= 1; i++ {
		p.event(protocol.Progress{Stage: "refining", Step: i, Total: 1})
	}
	p.event(protocol.Progress{Stage: "upscaling", Step: 0, Total: 1})
	out := buf.String()
	assert.Contains(t, out, "denoising (base) 3/3")
	assert.Contains(t, out, "refining (refiner) 1/1")
	assert.Contains(t, out, "upscaling 0/1")
}

func TestUpscaleOnlyTakesThePicturesPrompt(t *testing.T) {
	dir := t.TempDir()
	plain := writeTestPNG(t, filepath.Join(dir, "photo.png"), 8, 8, false)
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	rf := addRequestFlags(fs)
	require.NoError(t, fs.Parse([]string{"--upscale-only", "--init-image", plain, "--upscaler", "lanczos"}))
	r, err := rf.build()
	require.NoError(t, err, "no --prompt needed to upscale")
	assert.Equal(t, "upscaled photo.png", r.Prompt, "a picture without settings is named by its file")
	assert.True(t, r.UpscaleOnly)
	assert.Equal(t, request.DefaultUpscale, r.Upscale)
}

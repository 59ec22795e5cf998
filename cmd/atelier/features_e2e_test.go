//go:build linux

package main

// End-to-end tests of the SDXL features through the real binary, worker and
// history, on the tiny models at 64x64. A feature the worker does not list in
// its hello is skipped by name (never silently), so these run once it lands.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/library"
	"atelier/core/request"
	"atelier/core/store"
)

var (
	featuresOnce sync.Once
	featuresList []string
	featuresErr  string
)

// workerFeatures asks the worker (through atelier doctor) which features its
// hello lists.
func workerFeatures(t *testing.T) []string {
	t.Helper()
	requireWorker(t)
	featuresOnce.Do(func() {
		h := &home{t: t, dir: t.TempDir()}
		out, errOut, code := h.run("doctor")
		if code != 0 {
			featuresErr = "atelier doctor failed:\n" + out + errOut
			return
		}
		m := regexp.MustCompile(`(?m)^\s*features:\s*(.*)$`).FindStringSubmatch(out)
		if m == nil {
			featuresErr = "atelier doctor lists no features:\n" + out
			return
		}
		for _, f := range strings.Split(m[1], ",") {
			featuresList = append(featuresList, strings.TrimSpace(f))
		}
	})
	require.Empty(t, featuresErr)
	return featuresList
}

// needFeature skips a test whose feature the worker does not support yet, saying which.
func needFeature(t *testing.T, features ...string) {
	t.Helper()
	have := workerFeatures(t)
	for _, f := range features {
		if !slices.Contains(have, f) {
			t.Skipf("the worker's hello does not list feature %q (it lists %v): this test runs once the worker supports it", f, have)
		}
	}
}

// writeTestPNG writes a w×h image: black with a white square in the middle
// (edges for Canny), or all white when fill is set (a mask repainting everything).
func writeTestPNG(t *testing.T, path string, w, h int, fill bool) string {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			c := color.NRGBA{R: 20, G: 40, B: 90, A: 255}
			if fill || (x > w/4 && x < 3*w/4 && y > h/4 && y < 3*h/4) {
				c = color.NRGBA{R: 255, G: 255, B: 255, A: 255}
			}
			img.Set(x, y, c)
		}
	}
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, img))
	require.NoError(t, os.WriteFile(path, buf.Bytes(), 0o644))
	return path
}

// writeTestSafetensors writes a valid safetensors file whose tensors (4 float32
// zeros each) carry the given names.
func writeTestSafetensors(t *testing.T, path string, keys ...string) string {
	t.Helper()
	header := map[string]any{}
	for i, k := range keys {
		header[k] = map[string]any{"dtype": "F32", "shape": []int{4}, "data_offsets": []int{i * 16, (i + 1) * 16}}
	}
	hb, err := json.Marshal(header)
	require.NoError(t, err)
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(hb)))
	b = append(append(b, hb...), make([]byte, 16*len(keys))...)
	require.NoError(t, os.WriteFile(path, b, 0o644))
	return path
}

func imageSize(t *testing.T, path string) (int, int) {
	t.Helper()
	cfg, err := png.DecodeConfig(bytes.NewReader(readFile(t, path)))
	require.NoError(t, err, path)
	return cfg.Width, cfg.Height
}

// featureRun is one generate with the tiny base arguments plus a feature's.
type featureRun struct {
	paths  []string
	stderr string
	done   doneLine
	jobs   []store.JobRecord // the new history rows, newest first
}

func (h *home) generateFeature(t *testing.T, args ...string) featureRun {
	t.Helper()
	before := len(h.history())
	all := append(append(append([]string{}, tinyArgs...), "--seed", "7"), append(args, "--json")...)
	stdout, stderr, code := h.run(all...)
	require.Equal(t, 0, code, "atelier %s\nstderr:\n%s", strings.Join(all, " "), stderr)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	var r featureRun
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &r.done), lines[len(lines)-1])
	require.True(t, r.done.OK)
	for _, im := range r.done.Images {
		r.paths = append(r.paths, im.Path)
	}
	r.stderr = stderr
	jobs := h.history()
	r.jobs = jobs[:len(jobs)-before]
	require.NotEmpty(t, r.jobs)
	return r
}

func TestFeaturesEndToEnd(t *testing.T) {
	requireWorker(t)
	h := newHome(t) // one home: the tiny parts are generated once
	in := t.TempDir()
	control := writeTestPNG(t, filepath.Join(in, "edges.png"), 64, 64, false)
	odd := writeTestPNG(t, filepath.Join(in, "odd-size.png"), 100, 40, false)
	initImg := writeTestPNG(t, filepath.Join(in, "init.png"), 64, 64, false)
	mask := writeTestPNG(t, filepath.Join(in, "mask.png"), 64, 64, true)

	t.Run("scheduler and schedule", func(t *testing.T) {
		needFeature(t, "schedules")
		r := h.generateFeature(t, "--scheduler", "dpmpp_2m", "--schedule", "karras")
		params := pngText(t, r.paths[0])["parameters"]
		assert.Contains(t, params, "Sampler: DPM++ 2M")
		assert.Contains(t, params, "Schedule type: Karras")
		assert.Equal(t, "karras", r.jobs[0].Request.Schedule)

		r = h.generateFeature(t, "--scheduler", "heun")
		assert.Contains(t, pngText(t, r.paths[0])["parameters"], "Sampler: Heun")
		assert.Equal(t, "heun", r.jobs[0].Request.Scheduler)
	})

	t.Run("lora", func(t *testing.T) {
		needFeature(t, "lora")
		r := h.generateFeature(t, "--lora", "tiny-lora:0.8")
		params := pngText(t, r.paths[0])["parameters"]
		assert.Contains(t, params, "<lora:tiny-lora:0.8>")
		assert.Contains(t, params, "Lora hashes")
		assert.Equal(t, []request.LoRA{{Path: request.TinyLoRA, Weight: 0.8}}, r.jobs[0].Request.LoRAs)
	})

	t.Run("controlnet, and a control image of another size is resized", func(t *testing.T) {
		needFeature(t, "controlnet", "canny")
		r := h.generateFeature(t, "--controlnet",
			"type=canny,model=tiny-controlnet,image="+control+",scale=0.7,start=0,end=0.9,low=50,high=150",
			"--controlnet", "type=depth,model=tiny-controlnet,image="+odd)
		params := pngText(t, r.paths[0])["parameters"]
		assert.Contains(t, params, "ControlNet 0:")
		assert.Contains(t, params, "Module: canny")
		assert.Contains(t, params, "Weight: 0.7")
		assert.Contains(t, params, "Threshold A: 50")
		assert.Contains(t, params, "ControlNet 1:")
		require.Len(t, r.done.ControlImages, 2, "the result lists the images the ControlNets saw")
		for _, p := range r.done.ControlImages {
			w, hgt := imageSize(t, p)
			assert.Equal(t, [2]int{64, 64}, [2]int{w, hgt}, "control images are resized to the output size")
		}
		cns := r.jobs[0].Request.ControlNets
		require.Len(t, cns, 2)
		assert.Equal(t, 50, cns[0].CannyLow)
		assert.Equal(t, odd, cns[1].Image)
	})

	t.Run("refiner", func(t *testing.T) {
		needFeature(t, "refiner")
		r := h.generateFeature(t, "--refiner", "tiny-refiner", "--refiner-switch", "0.7")
		params := pngText(t, r.paths[0])["parameters"]
		assert.Contains(t, params, "Refiner: tiny-refiner")
		assert.Contains(t, params, "Refiner switch at: 0.7")
		assert.Contains(t, r.stderr, "denoising (base)", "progress shows the base stage")
		assert.Contains(t, r.stderr, "refining (refiner)", "progress shows the refiner stage")
		assert.Equal(t, 0.7, r.jobs[0].Request.RefinerSwitch)
	})

	t.Run("vae", func(t *testing.T) {
		needFeature(t, "vae")
		r := h.generateFeature(t, "--vae", "tiny-vae")
		assert.Contains(t, pngText(t, r.paths[0])["parameters"], "VAE: tiny-vae")
		assert.Equal(t, request.TinyVAE, r.jobs[0].Request.VAE)
	})

	t.Run("img2img", func(t *testing.T) {
		needFeature(t, "img2img")
		r := h.generateFeature(t, "--init-image", initImg, "--strength", "0.5")
		assert.Contains(t, pngText(t, r.paths[0])["parameters"], "Denoising strength: 0.5")
		assert.Equal(t, initImg, r.jobs[0].Request.InitImage)
		assert.Equal(t, 0.5, r.jobs[0].Request.Strength)
	})

	t.Run("inpaint", func(t *testing.T) {
		needFeature(t, "inpaint")
		r := h.generateFeature(t, "--init-image", initImg, "--strength", "0.75", "--mask", mask,
			"--mask-blur", "2", "--mask-padding", "8")
		params := pngText(t, r.paths[0])["parameters"]
		assert.Contains(t, params, "Mask blur: 2")
		assert.Contains(t, params, "Masked area padding: 8")
		req := r.jobs[0].Request
		assert.Equal(t, mask, req.MaskImage)
		require.NotNil(t, req.MaskBlur)
		assert.Equal(t, 2, *req.MaskBlur)
	})

	t.Run("upscale lanczos", func(t *testing.T) {
		needFeature(t, "upscale")
		r := h.generateFeature(t, "--upscaler", "lanczos", "--upscale", "2")
		params := pngText(t, r.paths[0])["parameters"]
		assert.Contains(t, params, "Postprocess upscaler: Lanczos")
		assert.Contains(t, params, "Postprocess upscale by: 2")
		assert.Contains(t, params, "Size: 64x64", "Size stays the generated size")
		w, hgt := imageSize(t, r.paths[0])
		assert.Equal(t, [2]int{128, 128}, [2]int{w, hgt})
		assert.Equal(t, 128, r.jobs[0].Images[0].Width, "the history records the saved size")
	})

	t.Run("hires fix", func(t *testing.T) {
		needFeature(t, "hires")
		r := h.generateFeature(t, "--hires", "2", "--hires-steps", "4", "--hires-strength", "0.5")
		params := pngText(t, r.paths[0])["parameters"]
		assert.Contains(t, params, "Denoising strength: 0.5, Hires upscale: 2, Hires steps: 4, Hires upscaler: Lanczos")
		assert.Contains(t, params, "Size: 64x64", "Size stays the first pass's")
		w, hgt := imageSize(t, r.paths[0])
		assert.Equal(t, [2]int{128, 128}, [2]int{w, hgt})
		req := r.jobs[0].Request
		assert.Equal(t, [3]float64{2, 4, 0.5}, [3]float64{req.HiresScale, float64(req.HiresSteps), req.HiresStrength})
		assert.Equal(t, 128, r.jobs[0].Images[0].Width, "the history records the saved size")
	})

	t.Run("upscale only", func(t *testing.T) {
		needFeature(t, "upscale")
		src := h.generateFeature(t)
		r := h.generateFeature(t, "--upscale-only", "--init-image", src.paths[0], "--upscaler", "lanczos", "--upscale", "2",
			"--model", filepath.Join(t.TempDir(), "no-such-model")) // no model is loaded, nor checked
		w, hgt := imageSize(t, r.paths[0])
		assert.Equal(t, [2]int{128, 128}, [2]int{w, hgt})
		params := pngText(t, r.paths[0])["parameters"]
		assert.True(t, strings.HasPrefix(params, pngText(t, src.paths[0])["parameters"]), "the source's settings are kept: %s", params)
		assert.True(t, strings.HasSuffix(params, ", Postprocess upscaler: Lanczos, Postprocess upscale by: 2"), params)
		req := r.jobs[0].Request
		assert.True(t, req.UpscaleOnly)
		assert.Equal(t, src.jobs[0].Request.Prompt, req.Prompt)
	})

	t.Run("upscale model", func(t *testing.T) {
		needFeature(t, "upscale_model")
		r := h.generateFeature(t, "--upscaler", "tiny-upscaler", "--upscale", "2")
		assert.Contains(t, pngText(t, r.paths[0])["parameters"], "Postprocess upscaler: tiny-upscaler")
		w, _ := imageSize(t, r.paths[0])
		assert.Equal(t, 128, w)
	})

	t.Run("batch size and batch count", func(t *testing.T) {
		needFeature(t, "batch")
		r := h.generateFeature(t, "--batch-size", "2", "--batch-count", "2")
		require.Len(t, r.paths, 4)
		require.Len(t, r.jobs, 2, "two jobs in the history")
		assert.Len(t, r.done.JobIDs, 2)
		for i, p := range r.paths {
			seed := int64(7 + i)
			assert.Equal(t, seed, r.done.Images[i].Seed)
			assert.Contains(t, pngText(t, p)["parameters"], "Seed: "+itoa(seed), "each image records its own seed")
		}
		// Newest first: the second job started at seed + batch size.
		assert.Equal(t, int64(9), r.jobs[0].Request.Seed)
		assert.Equal(t, int64(7), r.jobs[1].Request.Seed)
	})

	t.Run("single-file checkpoint", func(t *testing.T) {
		needFeature(t, "single_file")
		r := h.generateFeature(t, "--model", "tiny-single-file")
		assert.Contains(t, pngText(t, r.paths[0])["parameters"], "Model: tiny-single-file")
	})
}

func TestBadFeatureInputIsExplainedAndTheNextJobWorks(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	in := t.TempDir()
	initImg := writeTestPNG(t, filepath.Join(in, "init.png"), 64, 64, false)
	smallMask := writeTestPNG(t, filepath.Join(in, "small-mask.png"), 32, 32, true)
	vaeNotLoRA := writeTestSafetensors(t, filepath.Join(in, "not-a-lora.safetensors"),
		"encoder.conv_in.weight", "decoder.conv_out.weight")
	loraNotUpscaler := writeTestSafetensors(t, filepath.Join(in, "not-an-upscaler.safetensors"),
		"lora_unet_down_blocks_0.lora_down.weight", "lora_unet_down_blocks_0.lora_up.weight")
	ckpt := filepath.Join(in, "old-style.ckpt")
	require.NoError(t, os.WriteFile(ckpt, []byte("not loaded"), 0o644))

	for _, tc := range []struct {
		name    string
		feature string
		args    []string
		want    []string // in stderr
	}{
		{"a file that is no LoRA", "lora", []string{"--lora", vaeNotLoRA}, []string{"--lora", "loras[0].path"}},
		{"a mask of another size", "inpaint", []string{"--init-image", initImg, "--mask", smallMask}, []string{"--mask"}},
		{"a file that is no upscaler", "upscale_model", []string{"--upscaler", loraNotUpscaler}, []string{"--upscaler"}},
		{"a pickle LoRA", "", []string{"--lora", ckpt}, []string{"--lora", "loras[0].path", "old-style.ckpt", "pickle"}},
		{"a pickle model", "", []string{"--model", ckpt}, []string{"--model", "old-style.ckpt", "pickle"}},
		{"a missing control image", "", []string{"--controlnet", "type=canny,model=tiny-controlnet,image=" + filepath.Join(in, "nope.png")},
			[]string{"--controlnet", "controlnets[0].image", "nope.png"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.feature != "" {
				needFeature(t, tc.feature)
			}
			stdout, stderr, code := h.run(append(append(append([]string{}, tinyArgs...), "--seed", "7"), tc.args...)...)
			assert.Equal(t, exitUsage, code, "stderr:\n%s", stderr)
			assert.Empty(t, stdout)
			for _, w := range tc.want {
				assert.Contains(t, stderr, w)
			}
		})
	}
	// The worker survives every refusal: the next plain job works.
	stdout, stderr, code := h.run(tinyArgs...)
	require.Equal(t, 0, code, stderr)
	assert.FileExists(t, strings.TrimSpace(stdout))
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func TestModelsCommandListsTheLibrary(t *testing.T) {
	h := newHome(t)
	lib := t.TempDir()
	writeTestSafetensors(t, filepath.Join(lib, "detail.safetensors"), "lora_unet_a.lora_down.weight")
	require.NoError(t, os.MkdirAll(filepath.Join(lib, "cn", "canny"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(lib, "cn", "canny", "config.json"), []byte(`{"_class_name":"ControlNetModel"}`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(lib, "old.ckpt"), []byte("x"), 0o644))

	out, stderr, code := h.run("models")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "models add-folder", "an empty library says how to add a folder")
	own := filepath.Join(h.dir, "data", "models")
	assert.Contains(t, out, "Folders:\n  "+own+" (Atelier's models folder: always scanned; downloads go here)\n",
		"Atelier's own folder comes first, as the studio's Settings list it")
	assert.Contains(t, out, request.TinyLoRA, "the tiny parts are always listed")

	out, stderr, code = h.run("models", "add-folder", lib)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "2 models found (1 refused)")

	out, stderr, code = h.run("models", "--json")
	require.Equal(t, 0, code, stderr)
	var got library.Library
	require.NoError(t, json.Unmarshal([]byte(out), &got), out)
	assert.Equal(t, []string{own, lib}, got.Folders, "its own folder first, then the one added")
	kinds := map[string]library.LibraryEntry{}
	for _, e := range got.Entries {
		kinds[filepath.Base(e.Path)] = e
	}
	assert.Equal(t, library.KindLoRA, kinds["detail.safetensors"].Kind)
	assert.Equal(t, library.KindControlNet, kinds["canny"].Kind)
	assert.Contains(t, kinds["old.ckpt"].Refused, "pickle")

	out, _, code = h.run("models")
	require.Equal(t, 0, code)
	assert.Contains(t, out, "LoRAs:")
	assert.Contains(t, out, "REFUSED")

	_, stderr, code = h.run("models", "add-folder", filepath.Join(lib, "missing"))
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "missing")
	out, stderr, code = h.run("models", "remove-folder", lib)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "removed")
}

func TestModelsCommandPointsAtOtherAppsModelFolders(t *testing.T) {
	h := newHome(t)
	fakeHome := t.TempDir()
	a1111 := filepath.Join(fakeHome, "stable-diffusion-webui", "models")
	require.NoError(t, os.MkdirAll(filepath.Join(a1111, "Lora"), 0o755))
	writeTestSafetensors(t, filepath.Join(a1111, "Lora", "detail.safetensors"), "lora_unet_a.lora_down.weight")
	run := func(args ...string) string {
		cmd := h.command(context.Background(), args...)
		cmd.Env = append(cmd.Env, "HOME="+fakeHome, "HF_HUB_CACHE="+filepath.Join(fakeHome, "none"))
		out, err := cmd.Output()
		require.NoError(t, err)
		return string(out)
	}
	out := run("models")
	assert.Contains(t, out, "Model folders of other apps on this machine, not in the library")
	assert.Contains(t, out, a1111)
	assert.NotContains(t, out, "detail", "only suggested: the CLI changes no setting by itself")

	run("models", "add-folder", a1111)
	out = run("models")
	assert.Contains(t, out, "detail")
	assert.NotContains(t, out, "Model folders of other apps", "nothing left to suggest")
}

// TestDamagedInputFilesAreRefusedBeforeTheWorkerStarts runs without a Python:
// had the worker been needed to find the fault, the CLI would say that it
// cannot start one (exit 1) instead of naming the input (exit 2).
func TestDamagedInputFilesAreRefusedBeforeTheWorkerStarts(t *testing.T) {
	in := t.TempDir()
	initImg := writeTestPNG(t, filepath.Join(in, "init.png"), 64, 64, false)
	smallMask := writeTestPNG(t, filepath.Join(in, "small-mask.png"), 32, 32, true)
	whole := readFile(t, writeTestPNG(t, filepath.Join(in, "whole.png"), 64, 64, false))
	cut := filepath.Join(in, "cut.png")
	require.NoError(t, os.WriteFile(cut, whole[:len(whole)/2], 0o644))
	notPNG := filepath.Join(in, "notes.png")
	require.NoError(t, os.WriteFile(notPNG, []byte("these are notes, not a picture"), 0o644))
	notST := filepath.Join(in, "download.safetensors")
	require.NoError(t, os.WriteFile(notST, []byte("<html>rate limited</html>"), 0o644))
	vaeNotLoRA := writeTestSafetensors(t, filepath.Join(in, "not-a-lora.safetensors"),
		"encoder.conv_in.weight", "decoder.conv_out.weight")

	for _, tc := range []struct {
		name string
		args []string
		want []string // in stderr
	}{
		{"a model file that is no safetensors", []string{"--model", notST}, []string{"--model", "is not a safetensors file"}},
		{"a LoRA file that is no safetensors", []string{"--lora", notST}, []string{"--lora", "loras[0].path", "is not a safetensors file"}},
		{"a file with no LoRA weights", []string{"--lora", "tiny-lora", "--lora", vaeNotLoRA}, []string{"--lora", "loras[1].path", "holds no LoRA weights"}},
		{"a VAE file that is no safetensors", []string{"--vae", notST}, []string{"--vae", "is not a safetensors file"}},
		{"an upscaler that is no safetensors", []string{"--upscaler", notST}, []string{"--upscaler", "is not a safetensors file"}},
		{"a truncated init image", []string{"--init-image", cut}, []string{"--init-image", "cut.png", "damaged or cut short"}},
		{"an init image that is no image", []string{"--init-image", notPNG}, []string{"--init-image", "notes.png", "not an image"}},
		{"a mask of another size", []string{"--init-image", initImg, "--mask", smallMask}, []string{"--mask", "32x32", "64x64"}},
		{"a truncated control image", []string{"--controlnet", "type=canny,model=tiny-controlnet,image=" + cut},
			[]string{"--controlnet", "controlnets[0].image", "damaged or cut short"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHome(t)
			for _, cmd := range [][]string{append([]string{}, tinyArgs...), {"queue", "add", "--prompt", "a lighthouse", "--steps", "4", "--width", "64", "--height", "64"}} {
				cmd := h.command(context.Background(), append(cmd, tc.args...)...)
				cmd.Env = append(cmd.Env, "ATELIER_PYTHON="+filepath.Join(t.TempDir(), "no-python"), "ATELIER_WORKER_DIR="+t.TempDir())
				var stdout, stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				err := cmd.Run()
				var exit *exec.ExitError
				require.ErrorAs(t, err, &exit, "stderr:\n%s", stderr.String())
				assert.Equal(t, exitUsage, exit.ExitCode(), "%v: stderr:\n%s", cmd.Args[1], stderr.String())
				for _, w := range tc.want {
					assert.Contains(t, stderr.String(), w, cmd.Args[1])
				}
				assert.Empty(t, stdout.String())
			}
			assert.Empty(t, h.history(), "refused input leaves no job row")
			assert.Empty(t, h.images())
		})
	}
}

package ui

import (
	"context"
	"fmt"
	"image"
	"image/color"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/jobs"
	"atelier/core/library"
	"atelier/core/protocol"
	"atelier/core/request"
)

func TestEverySectionCanBeFilled(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	f, x := s.form, s.form
	setForm(s, "a lighthouse", 4, 64, 64)
	f.seed.seed.SetText("7")

	f.sampling.scheduler.SetSelected("DPM++ 2M")
	x.sampling.schedule.SetSelected("Karras")

	test.Tap(x.lora.add)
	test.Tap(x.lora.add)
	require.Len(t, x.lora.rows, 2)
	x.lora.rows[0].path.SetText("/loras/detail.safetensors")
	x.lora.rows[0].slider.SetValue(-1.5) // the slider writes the entry
	x.lora.rows[1].weight.SetText("0.8")

	test.Tap(x.controlNet.add)
	require.Len(t, x.controlNet.rows, 1)
	cn := x.controlNet.rows[0]
	cn.kind.SetSelected("canny")
	cn.model.SetText(request.TinyControlNet)
	cn.image.SetText("/in/edges.png")
	cn.scale.SetText("0.7")
	cn.start.SetText("0.1")
	cn.end.SetText("0.9")
	cn.cannyLow.SetText("50")
	cn.cannyHigh.SetText("150")

	x.refiner.refiner.SetText(request.TinyRefiner)
	x.refiner.slider.SetValue(0.7)
	x.vae.vae.SetText(request.TinyVAE)
	x.img2img.initImage.SetText("/in/photo.png")
	x.img2img.strength.SetText("0.5")
	x.img2img.mask.SetText("/in/mask.png")
	x.img2img.maskBlur.SetText("0")
	x.img2img.maskPadding.SetText("32")
	x.upscale.upscaler.SetText(request.LanczosUpscaler)
	x.upscale.factor.SetText("1.5")
	f.batch.batchSize.SetSelected("2")
	x.batch.batchCount.SetText("3")

	req, verr := f.request()
	require.Nil(t, verr)
	assert.Equal(t, "dpmpp_2m", req.Scheduler)
	assert.Equal(t, "karras", req.Schedule)
	assert.Equal(t, []request.LoRA{{Path: "/loras/detail.safetensors", Weight: -1.5}, {Path: request.TinyLoRA, Weight: 0.8}}, req.LoRAs)
	assert.Equal(t, []request.ControlNet{{Type: "canny", Model: request.TinyControlNet, Image: "/in/edges.png", Scale: 0.7,
		Start: 0.1, End: 0.9, CannyLow: 50, CannyHigh: 150}}, req.ControlNets)
	assert.Equal(t, request.TinyRefiner, req.Refiner)
	assert.Equal(t, 0.7, req.RefinerSwitch)
	assert.Equal(t, request.TinyVAE, req.VAE)
	assert.Equal(t, "/in/photo.png", req.InitImage)
	assert.Equal(t, 0.5, req.Strength)
	assert.Equal(t, "/in/mask.png", req.MaskImage)
	require.NotNil(t, req.MaskBlur)
	assert.Equal(t, 0, *req.MaskBlur)
	assert.Equal(t, 32, req.MaskPadding)
	assert.Equal(t, request.LanczosUpscaler, req.Upscaler)
	assert.Equal(t, 1.5, req.Upscale)
	assert.Equal(t, 2, req.BatchSize)
	n, fe := x.count()
	assert.Nil(t, fe)
	assert.Equal(t, 3, n)

	// The form shows a request it was given, features and all.
	f.set(request.DefaultRequest())
	assert.Empty(t, x.lora.rows)
	f.set(req)
	got, verr := f.request()
	require.Nil(t, verr)
	assert.Equal(t, req, got)
}

func TestInvalidSectionValuesAreShownBesideTheirField(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fill  func(x *form)
		field string
		want  string
	}{
		{"lora weight", func(x *form) { x.lora.addRow(request.LoRA{Path: request.TinyLoRA, Weight: 1}).weight.SetText("7") },
			"loras[0].weight", "between -5 and 5"},
		{"lora weight text", func(x *form) { x.lora.addRow(request.LoRA{Path: request.TinyLoRA, Weight: 1}).weight.SetText("lots") },
			"loras[0].weight", "must be a number"},
		{"lora pickle", func(x *form) {
			x.lora.addRow(request.LoRA{Path: request.TinyLoRA, Weight: 1})
			x.lora.addRow(request.LoRA{Path: "/old/style.ckpt", Weight: 1})
		}, "loras[1].path", "pickle"},
		{"controlnet end", func(x *form) {
			r := x.controlNet.addRow(request.DefaultControlNet())
			r.image.SetText("/c.png")
			r.start.SetText("0.6")
			r.end.SetText("0.4")
		}, "controlnets[0].end", "after start"},
		{"controlnet image", func(x *form) { x.controlNet.addRow(request.DefaultControlNet()) }, "controlnets[0].image", "control image"},
		{"controlnet canny", func(x *form) {
			r := x.controlNet.addRow(request.DefaultControlNet())
			r.image.SetText("/c.png")
			r.cannyLow.SetText("300")
		}, "controlnets[0].canny_low", "between 0 and 255"},
		{"refiner switch", func(x *form) { x.refiner.refiner.SetText(request.TinyRefiner); x.refiner.switchAt.SetText("1") },
			fRefinerSwitch, "above 0 and below 1"},
		{"vae pickle", func(x *form) { x.vae.vae.SetText("/vae/x.pt") }, fVAE, "pickle"},
		{"strength", func(x *form) { x.img2img.initImage.SetText("/i.png"); x.img2img.strength.SetText("1.5") }, fStrength, "at most 1"},
		{"mask without init image", func(x *form) { x.img2img.mask.SetText("/m.png") }, fMask, "init image"},
		{"mask blur", func(x *form) {
			x.img2img.initImage.SetText("/i.png")
			x.img2img.mask.SetText("/m.png")
			x.img2img.maskBlur.SetText("99")
		},
			fMaskBlur, "between 0 and 64"},
		{"upscale", func(x *form) { x.upscale.upscaler.SetText(request.LanczosUpscaler); x.upscale.factor.SetText("9") }, fUpscale, "between 1 and 4"},
		{"upscaler not a model", func(x *form) { x.upscale.upscaler.SetText("bicubic") }, fUpscaler, "lanczos"},
		{"batch count", func(x *form) { x.batch.batchCount.SetText("0") }, fBatchCount, "from 1 to 100"},
		{"hires scale", func(x *form) { x.hires.scale.SetText("0.5") }, fHires, "between 1 and 4"},
		{"hires scale 0", func(x *form) { x.hires.scale.SetText("0") }, fHires, "leave it empty"},
		{"hires with img2img", func(x *form) { x.img2img.initImage.SetText("/i.png"); x.hires.scale.SetText("2") }, fHires, "text-to-image"},
		{"hires strength", func(x *form) { x.hires.scale.SetText("2"); x.hires.strength.SetText("1.2") }, fHiresStrength, "at most 1"},
		{"hires steps", func(x *form) { x.hires.scale.SetText("2"); x.hires.steps.SetText("many") }, fHiresSteps, "whole number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gen := &fakeGen{}
			s := newTestStudio(t, gen, &memHistory{})
			setForm(s, "a lighthouse", 4, 64, 64)
			tc.fill(s.form)
			s.Generate()
			s.q.drain()
			msg := s.form.fieldError(tc.field)
			assert.Contains(t, msg, tc.want, "the message beside %s", tc.field)
			assert.Equal(t, int32(0), gen.calls.Load(), "an invalid form runs no job")
		})
	}
}

func TestHiresFixSectionFillsTheRequest(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	setForm(s, "a lighthouse", 4, 64, 64)
	f, x := s.form, s.form
	req, verr := f.request()
	require.Nil(t, verr)
	assert.Zero(t, req.HiresScale, "an empty factor is no hires pass")
	assert.Zero(t, req.HiresStrength)

	x.hires.scale.SetText("2")
	assert.Equal(t, "64 × 64 to 128 × 128", x.hires.hint.Text, "the hint shows the size the pass makes")
	f.size.width.SetText("96")
	assert.Equal(t, "96 × 64 to 192 × 128", x.hires.hint.Text, "and follows the size")
	f.size.width.SetText("64")
	x.hires.steps.SetText("12")
	x.hires.strengthSlider.SetValue(0.35) // the slider writes the entry
	req, verr = f.request()
	require.Nil(t, verr)
	assert.Equal(t, [3]float64{2, 12, 0.35}, [3]float64{req.HiresScale, float64(req.HiresSteps), req.HiresStrength})

	// Shown back as given (a reloaded PNG, "use these settings"), and cleared by a request without one.
	f.set(request.DefaultRequest())
	assert.Empty(t, x.hires.scale.Text)
	assert.Empty(t, x.hires.hint.Text, "no pass, no hint")
	f.set(req)
	got, verr := f.request()
	require.Nil(t, verr)
	assert.Equal(t, req, got)
	assert.Equal(t, "12", x.hires.steps.Text)
}

func TestRemovingARowRenumbersItsErrors(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	setForm(s, "a lighthouse", 4, 64, 64)
	x := s.form
	first := x.lora.addRow(request.LoRA{Path: request.TinyLoRA, Weight: 1})
	x.lora.addRow(request.LoRA{Path: request.TinyLoRA, Weight: 9})
	test.Tap(first.remove)
	require.Len(t, x.lora.rows, 1)
	s.Generate()
	assert.Contains(t, s.form.fieldError("loras[0].weight"), "LoRA 1 weight must be between -5 and 5")
	assert.Empty(t, s.form.fieldError("loras[1].weight"))
}

func TestChoicesComeFromCapabilitiesAndLibrary(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	f, x := s.form, s.form
	assert.Equal(t, []string{"Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "DDIM", "Heun", "DPM2", "DPM2 a", "LMS", "UniPC"},
		f.sampling.scheduler.Options, "before a worker starts, core's list, by A1111's names")

	x.setCapabilities(&protocol.Capabilities{Schedulers: []string{"euler", "ddim"}, ControlNetTypes: []string{"canny", "depth"},
		Schedules: map[string][]string{"euler": {"karras"}, "ddim": {}}})
	assert.Equal(t, []string{"Euler", "DDIM"}, f.sampling.scheduler.Options)
	f.sampling.scheduler.SetSelected("Euler")
	assert.Equal(t, []string{"Automatic", "Karras"}, x.sampling.schedule.Options)
	f.sampling.scheduler.SetSelected("DDIM")
	assert.Equal(t, []string{"Automatic"}, x.sampling.schedule.Options, "ddim takes no sigma schedule")
	f.set(request.DefaultRequest())
	assert.Equal(t, "Euler", f.sampling.scheduler.Selected, "a request's id shows as its name")
	r := x.controlNet.addRow(request.DefaultControlNet())
	assert.Equal(t, []string{"canny", "depth"}, r.kind.Options)

	x.setLibrary(&library.Library{Entries: []library.LibraryEntry{
		{Path: "/m/juggernaut.safetensors", Kind: library.KindCheckpoint},
		{Path: "/m/detail.safetensors", Kind: library.KindLoRA},
		{Path: "/m/old.ckpt", Kind: library.KindLoRA, Refused: "pickle"},
		{Path: "/m/canny", Kind: library.KindControlNet},
		{Path: "/m/vae-fix", Kind: library.KindVAE},
		{Path: "/m/4x.safetensors", Kind: library.KindUpscaler},
		{Path: "/m/refiner", Kind: library.KindRefiner},
	}})
	assert.Contains(t, x.fields.choices[f.model.entry], "/m/juggernaut.safetensors")
	f.rememberModel("/m/recent")
	assert.Contains(t, x.fields.choices[f.model.entry], "/m/juggernaut.safetensors", "a recent model does not push the library out")
	assert.Equal(t, "/m/recent", x.fields.choices[f.model.entry][1])
	assert.Equal(t, []string{request.TinyLoRA, "/m/detail.safetensors"}, x.fields.choices[x.lora.addRow(request.LoRA{Weight: 1}).path],
		"refused files are not offered")
	assert.Equal(t, []string{request.TinyControlNet, "/m/canny"}, x.fields.choices[r.model])
	assert.Equal(t, []string{request.TinyVAE, "/m/vae-fix"}, x.fields.choices[x.vae.vae])
	assert.Equal(t, []string{request.LanczosUpscaler, request.TinyUpscaler, "/m/4x.safetensors"}, x.fields.choices[x.upscale.upscaler])
	assert.Equal(t, []string{request.TinyRefiner, "/m/refiner"}, x.fields.choices[x.refiner.refiner])
}

func TestPaintedMaskIsWrittenWithThePaintedPixels(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	x := s.form
	dir := t.TempDir()
	x.img2img.maskDir = filepath.Join(dir, "masks")
	x.img2img.initImage.SetText(writePNG(t, dir, "init.png", 64, 32, color.NRGBA{R: 40, G: 90, B: 200, A: 255}))

	test.Tap(x.img2img.paintMask)
	require.NotNil(t, x.img2img.painter, "the painter opens over the init image")
	w := x.img2img.painter
	p := w.painter
	p.Resize(fyne.NewSize(128, 64)) // twice the image's size: widget (20,20) is image (10,10)
	w.size.SetValue(4)
	p.Dragged(&fyne.DragEvent{PointEvent: fyne.PointEvent{Position: fyne.NewPos(20, 20)}})
	p.Dragged(&fyne.DragEvent{PointEvent: fyne.PointEvent{Position: fyne.NewPos(30, 20)}})
	p.DragEnd()
	assert.Positive(t, p.painted())

	test.Tap(w.use)
	path := x.img2img.mask.Text
	require.NotEmpty(t, path, "Use mask puts the written file into the mask field")
	img, err := decodeImageFile(path)
	require.NoError(t, err)
	assert.Equal(t, image.Rect(0, 0, 64, 32), img.Bounds(), "the mask has the init image's size")
	gray := func(x, y int) uint8 { return color.GrayModel.Convert(img.At(x, y)).(color.Gray).Y }
	assert.Equal(t, uint8(255), gray(10, 10), "painted under the brush")
	assert.Equal(t, uint8(255), gray(15, 10), "painted along the drag")
	assert.Equal(t, uint8(0), gray(50, 25), "unpainted elsewhere")

	// Reopening starts from that mask; Clear empties it and an empty mask is not used.
	test.Tap(x.img2img.paintMask)
	w = x.img2img.painter
	assert.Positive(t, w.painter.painted())
	test.Tap(w.clear)
	assert.Zero(t, w.painter.painted())
	test.Tap(w.use)
	assert.Equal(t, path, x.img2img.mask.Text)
	assert.NotEmpty(t, w.status.Text)
}

func TestPaintingWithoutAnInitImageSaysWhy(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	x := s.form
	test.Tap(x.img2img.paintMask)
	assert.Nil(t, x.img2img.painter)
	assert.Contains(t, s.form.fieldError(fMask), "init image")
}

func TestResultShowsControlImagesAndVAEFallback(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	x := s.form
	dir := t.TempDir()
	ctl := writePNG(t, dir, "job-control-0.png", 64, 64, color.White)
	x.showResult(&jobs.JobOutcome{ControlImages: []string{ctl}, Metrics: &protocol.Metrics{VAEFallback: true}})
	assert.Len(t, x.controlNet.images.Objects, 1)
	assert.True(t, x.controlNet.imagesTitle.Visible())
	assert.True(t, x.vae.note.Visible())
	assert.Contains(t, x.vae.note.Text, "float32")
	x.showResult(&jobs.JobOutcome{Metrics: &protocol.Metrics{}})
	assert.Empty(t, x.controlNet.images.Objects)
	assert.False(t, x.vae.note.Visible())
	_, err := os.Stat(ctl)
	require.NoError(t, err)
}

func TestProgressNamesTheBaseAndRefinerStagesAndTheJob(t *testing.T) {
	j := newJobRun(request.Request{Refiner: request.TinyRefiner}, func() {})
	j.onEvent(event{kind: evJob, step: 2, total: 3})
	j.onEvent(event{kind: evProgress, stage: "denoising", step: 3, total: 4})
	p, _ := j.snapshot()
	assert.Equal(t, "Job 2/3 · base — denoising — 3/4 · 1.0 s", progressText(p, time.Second))
	j.onEvent(event{kind: evProgress, stage: "refining", step: 1, total: 1})
	p, _ = j.snapshot()
	assert.Equal(t, "Job 2/3 · refiner — refining — 1/1 · 1.0 s", progressText(p, time.Second))
	j.onEvent(event{kind: evProgress, stage: "upscaling", step: 0, total: 1})
	p, _ = j.snapshot()
	assert.Contains(t, progressText(p, time.Second), "upscaling — 0/1")
}

func TestBatchCountRunsJobsWithSteppedSeeds(t *testing.T) {
	dir := t.TempDir()
	var seeds []int64
	var mu sync.Mutex
	gen := &fakeGen{run: func(_ context.Context, req request.Request, _ func(event)) (*jobs.JobOutcome, error) {
		mu.Lock()
		seeds = append(seeds, req.Seed)
		mu.Unlock()
		var out jobs.JobOutcome
		for i := 0; i < req.BatchSize; i++ {
			p := writePNG(t, dir, fmt.Sprintf("img-%d.png", req.Seed+int64(i)), 8, 8, color.White)
			out.Images = append(out.Images, protocol.ImageResult{Path: p, Seed: req.Seed + int64(i), Width: 8, Height: 8})
		}
		out.Metrics = &protocol.Metrics{VAEFallback: true}
		return &out, nil
	}}
	s := newTestStudio(t, gen, &memHistory{})
	setForm(s, "a lighthouse", 4, 64, 64)
	s.form.seed.seed.SetText("100")
	s.form.batch.batchSize.SetSelected("2")
	s.form.batch.batchCount.SetText("3")
	s.Generate()
	s.waitFor(t, 10*time.Second, "three jobs", func() bool { return s.job == nil })
	assert.Equal(t, int32(3), gen.calls.Load())
	assert.Equal(t, []int64{100, 102, 104}, seeds)
	assert.Contains(t, s.status.text.Text, "6 images")
	assert.True(t, s.form.vae.note.Visible(), "the VAE fallback is shown")
}

type memSettings struct {
	mu sync.Mutex
	m  map[string]string
}

func (s *memSettings) GetSetting(_ context.Context, k string) (string, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[k]
	return v, ok, nil
}

func (s *memSettings) SetSetting(_ context.Context, k, v string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[k] = v
	return nil
}

// historyWithSettings is a History that also keeps settings, as store.Store does.
type historyWithSettings struct {
	memHistory
	memSettings
}

func TestAddingAModelFolderFillsTheChoices(t *testing.T) {
	models := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(models, "canny"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(models, "canny", "config.json"), []byte(`{"_class_name":"ControlNetModel"}`), 0o644))
	hist := &historyWithSettings{memSettings: memSettings{m: map[string]string{}}}
	s := newTestStudio(t, &fakeGen{}, hist)
	x := s.form
	x.fields.chooseFolder = func(string) (string, error) { return models, nil }
	test.Tap(x.model.addFolder)
	s.waitFor(t, 10*time.Second, "the library scan", func() bool {
		return slices.Contains(x.lib.Paths(library.KindControlNet), filepath.Join(models, "canny"))
	})
	assert.Contains(t, x.fields.choices[x.controlNet.addRow(request.DefaultControlNet()).model], filepath.Join(models, "canny"))
	folders, err := library.LibraryFolders(context.Background(), &hist.memSettings)
	require.NoError(t, err)
	assert.Equal(t, []string{models}, folders, "the folder is kept in the settings")
}

func TestOtherAppsModelFoldersJoinTheLibrary(t *testing.T) {
	home := t.TempDir()
	comfy := filepath.Join(home, "ComfyUI", "models")
	require.NoError(t, os.MkdirAll(filepath.Join(comfy, "controlnet", "canny"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(comfy, "controlnet", "canny", "config.json"), []byte(`{"_class_name":"ControlNetModel"}`), 0o644))
	t.Setenv("HF_HUB_CACHE", filepath.Join(home, "no-hub"))
	old := otherAppsHome
	otherAppsHome = func() (string, error) { return home, nil }
	t.Cleanup(func() { otherAppsHome = old })

	// First start: ComfyUI's models are found, added and announced.
	hist := &historyWithSettings{memSettings: memSettings{m: map[string]string{}}}
	s := newTestStudio(t, &fakeGen{}, hist)
	x := s.form
	s.waitFor(t, 20*time.Second, "the library scan", func() bool {
		return slices.Contains(x.lib.Paths(library.KindControlNet), filepath.Join(comfy, "controlnet", "canny"))
	})
	s.q.drain()
	assert.Contains(t, s.status.text.Text, "Found the model folders of other apps")
	assert.Contains(t, s.status.text.Text, comfy)
	folders, err := library.LibraryFolders(context.Background(), &hist.memSettings)
	require.NoError(t, err)
	assert.Equal(t, []string{comfy}, folders)

	// The user removed it: the next start leaves the list alone and says nothing.
	_, err = library.RemoveLibraryFolder(context.Background(), &hist.memSettings, comfy)
	require.NoError(t, err)
	s2 := newTestStudio(t, &fakeGen{}, hist)
	s2.waitFor(t, 20*time.Second, "the library scan", func() bool { return s2.form.lib != nil })
	s2.q.drain()
	assert.Empty(t, s2.form.lib.Paths(library.KindControlNet))
	assert.NotContains(t, s2.status.text.Text, "Found the model folders")
}

package main

import (
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"atelier/core/infotext"
	"atelier/core/request"
)

// requestFlags are the flags that make up a request.Request, shared by every
// subcommand that builds one ("generate", "queue add"). Register them with
// addRequestFlags, parse the flag set, then call build.
type requestFlags struct {
	fs  *flag.FlagSet
	req request.Request

	loras       loraList
	controlnets controlNetList

	refinerSwitch float64
	strength      float64
	maskBlur      int
	upscale       float64
	hiresStrength float64
	batchCount    int
}

// addRequestFlags registers every request flag on fs, with the defaults of
// request.DefaultRequest.
func addRequestFlags(fs *flag.FlagSet) *requestFlags {
	def := request.DefaultRequest()
	f := &requestFlags{fs: fs}
	r := &f.req
	fs.StringVar(&r.Prompt, "prompt", "", "what to draw (required)")
	fs.StringVar(&r.NegativePrompt, "negative", "", "what to keep out of the image")
	fs.StringVar(&r.Model, "model", def.Model, `"tiny" (a small random demo model; "tiny-single-file" is it as one file), a diffusers model folder or a single-file SDXL .safetensors checkpoint`)
	fs.StringVar(&r.Scheduler, "scheduler", def.Scheduler, "sampler: "+strings.Join(request.Schedulers, ", "))
	fs.StringVar(&r.Schedule, "schedule", "", "sigma schedule: karras, exponential or beta (default: the sampler's own)")
	fs.IntVar(&r.Steps, "steps", def.Steps, fmt.Sprintf("denoising steps, %d-%d", request.MinSteps, request.MaxSteps))
	fs.Float64Var(&r.CFG, "cfg", def.CFG, fmt.Sprintf("guidance scale, %g-%g", request.MinCFG, request.MaxCFG))
	fs.IntVar(&r.Width, "width", def.Width, fmt.Sprintf("width in pixels, a multiple of %d from %d to %d", request.SizeMultiple, request.MinSize, request.MaxSize))
	fs.IntVar(&r.Height, "height", def.Height, "height in pixels, as --width")
	fs.Int64Var(&r.Seed, "seed", def.Seed, "seed; -1 picks a random one (recorded in the history)")
	fs.IntVar(&r.BatchSize, "batch-size", def.BatchSize, fmt.Sprintf("images in one job, %d-%d; image i uses seed+i", request.MinBatch, request.MaxBatch))
	fs.IntVar(&r.BatchSize, "batch", def.BatchSize, "same as --batch-size")
	fs.IntVar(&f.batchCount, "batch-count", 1, fmt.Sprintf("jobs run one after another, %d-%d; job k uses seed + k × batch size", request.MinBatchCount, request.MaxBatchCount))

	fs.Var(&f.loras, "lora", fmt.Sprintf("PATH[:WEIGHT]: apply a LoRA (.safetensors, or %q); weight %g to %g, default 1; repeatable", request.TinyLoRA, request.MinLoRAWeight, request.MaxLoRAWeight))
	fs.Var(&f.controlnets, "controlnet", "type=T,model=M,image=I[,scale=1,start=0,end=1,low=100,high=200]: add a ControlNet unit; type is one of "+
		strings.Join(request.ControlNetTypes, ", ")+fmt.Sprintf("; model is a folder or %q; low/high are the canny thresholds; repeatable", request.TinyControlNet))
	fs.StringVar(&r.Refiner, "refiner", "", fmt.Sprintf("refiner model (folder, .safetensors or %q) run over the last steps", request.TinyRefiner))
	fs.Float64Var(&f.refinerSwitch, "refiner-switch", request.DefaultRefinerSwitch, "fraction of the steps the base model runs before the refiner takes over, between 0 and 1")
	fs.StringVar(&r.VAE, "vae", "", fmt.Sprintf("VAE replacing the model's own (folder, .safetensors or %q)", request.TinyVAE))
	fs.StringVar(&r.InitImage, "init-image", "", "image to start from (img2img)")
	fs.Float64Var(&f.strength, "strength", request.DefaultStrength, "img2img: how much of the init image is redrawn, above 0 and at most 1")
	fs.StringVar(&r.MaskImage, "mask", "", "inpainting mask (white = redraw); needs --init-image")
	fs.IntVar(&f.maskBlur, "mask-blur", request.DefaultMaskBlur, fmt.Sprintf("inpainting: blur of the mask edge in pixels, %d-%d", request.MinMaskBlur, request.MaxMaskBlur))
	fs.IntVar(&r.MaskPadding, "mask-padding", 0, fmt.Sprintf("inpainting: pixels of context around the masked area, %d-%d (0 = the whole image)", request.MinMaskPadding, request.MaxMaskPadding))
	fs.StringVar(&r.Upscaler, "upscaler", "", fmt.Sprintf("upscale the result: %q, an ESRGAN-family .safetensors model, or %q", request.LanczosUpscaler, request.TinyUpscaler))
	fs.Float64Var(&f.upscale, "upscale", request.DefaultUpscale, fmt.Sprintf("upscale factor, %g-%g", request.MinUpscale, request.MaxUpscale))
	fs.Float64Var(&r.HiresScale, "hires", 0, fmt.Sprintf("hires fix: enlarge the text-to-image result by this factor (%g-%g, Lanczos) and draw it again with img2img; 0 = off", request.MinHires, request.MaxHires))
	fs.IntVar(&r.HiresSteps, "hires-steps", 0, "hires fix: steps of the second pass (0 = --steps)")
	fs.BoolVar(&r.UpscaleOnly, "upscale-only", false, "enlarge --init-image with --upscaler by --upscale and generate nothing (no model loads); the prompt defaults to the picture's own")
	fs.Float64Var(&f.hiresStrength, "hires-strength", request.DefaultHiresStrength, "hires fix: how much of the enlarged image is redrawn, above 0 and at most 1")
	return f
}

// given reports whether the flag was set on the command line.
func (f *requestFlags) given(name string) bool {
	found := false
	f.fs.Visit(func(fl *flag.Flag) {
		if fl.Name == name {
			found = true
		}
	})
	return found
}

// build returns the request the flags describe, validated. Its error names
// the flags (and the request fields) that are wrong, and is reachable with
// request.AsValidation.
func (f *requestFlags) build() (request.Request, error) {
	r := f.req
	r.LoRAs = append([]request.LoRA(nil), f.loras...)
	r.ControlNets = append([]request.ControlNet(nil), f.controlnets...)
	// The feature options are sent only with their feature (or when typed,
	// so that validation can say they need it).
	if r.Refiner != "" || f.given("refiner-switch") {
		r.RefinerSwitch = f.refinerSwitch
	}
	if r.InitImage != "" || f.given("strength") {
		r.Strength = f.strength
	}
	if r.MaskImage != "" || f.given("mask-blur") {
		r.MaskBlur = request.IntPtr(f.maskBlur)
	}
	if r.Upscaler != "" || f.given("upscale") {
		r.Upscale = f.upscale
	}
	if r.HiresScale != 0 || f.given("hires-strength") {
		r.HiresStrength = f.hiresStrength
	}
	if r.UpscaleOnly && !f.given("prompt") && r.InitImage != "" {
		// The picture's own prompt where it has one, so the history finds it by it.
		r.Prompt = "upscaled " + filepath.Base(r.InitImage)
		if got, err := infotext.ImportPNG(r.InitImage, r, infotext.Models{}); err == nil && strings.TrimSpace(got.Request.Prompt) != "" {
			r.Prompt = got.Request.Prompt
		}
	}
	var errs []*request.FieldError
	need := func(flagName, field, needs string) {
		if f.given(flagName) && needs == "" {
			errs = append(errs, &request.FieldError{Field: field, Message: fmt.Sprintf("has no effect without --%s", map[string]string{
				"refiner_switch": "refiner", "strength": "init-image", "mask_blur": "mask", "mask_padding": "mask", "upscale": "upscaler",
				"hires_steps": "hires", "hires_strength": "hires"}[field])})
		}
	}
	need("refiner-switch", "refiner_switch", r.Refiner)
	need("strength", "strength", r.InitImage)
	need("mask-blur", "mask_blur", r.MaskImage)
	need("mask-padding", "mask_padding", r.MaskImage)
	need("upscale", "upscale", r.Upscaler)
	hires := ""
	if r.HiresScale != 0 {
		hires = "on"
	}
	need("hires-steps", "hires_steps", hires)
	need("hires-strength", "hires_strength", hires)
	if r.InitImage != "" && f.strength == 0 {
		// 0 would read as "the default" on the wire.
		errs = append(errs, &request.FieldError{Field: "strength", Message: "must be above 0 and at most 1, got 0"})
	}
	if r.HiresScale != 0 && f.hiresStrength == 0 {
		errs = append(errs, &request.FieldError{Field: "hires_strength", Message: "must be above 0 and at most 1, got 0"})
	}
	if err := r.Validate(); err != nil {
		v, ok := request.AsValidation(err)
		if !ok {
			return r, err
		}
		parsed := &request.ValidationError{Fields: errs}
		for _, fe := range v.Fields {
			if parsed.Field(fe.Field) == nil {
				parsed.Fields = append(parsed.Fields, fe)
			}
		}
		errs = parsed.Fields
	}
	if f.batchCount < request.MinBatchCount || f.batchCount > request.MaxBatchCount {
		errs = append(errs, &request.FieldError{Field: "batch_count",
			Message: fmt.Sprintf("must be between %d and %d, got %d", request.MinBatchCount, request.MaxBatchCount, f.batchCount)})
	}
	if len(errs) > 0 {
		return r, &flagErrors{v: &request.ValidationError{Fields: errs}}
	}
	return r, nil
}

// count is --batch-count: how many jobs to run one after another.
func (f *requestFlags) count() int { return f.batchCount }

// flagErrors is a validation error told in flag names.
type flagErrors struct{ v *request.ValidationError }

func (e *flagErrors) Error() string {
	lines := make([]string, len(e.v.Fields))
	for i, fe := range e.v.Fields {
		lines[i] = describeField(fe.Field, fe.Message)
	}
	return strings.Join(lines, "\n")
}

func (e *flagErrors) Unwrap() error { return e.v }

// describeField says which flag is wrong: "invalid --lora (loras[1].weight): must be …".
func describeField(field, message string) string {
	fl := flagName(field)
	if fl == field || !strings.ContainsAny(field, "[.") {
		return fmt.Sprintf("invalid %s: %s", fl, message)
	}
	return fmt.Sprintf("invalid %s (%s): %s", fl, field, message)
}

// flagForField maps a request field to the flag that sets it, so that an
// error names what the user typed.
var flagForField = map[string]string{
	"prompt": "--prompt", "negative_prompt": "--negative", "model": "--model", "scheduler": "--scheduler",
	"steps": "--steps", "cfg": "--cfg", "width": "--width", "height": "--height", "seed": "--seed",
	"batch_size": "--batch-size", "batch_count": "--batch-count", "schedule": "--schedule",
	"loras": "--lora", "controlnets": "--controlnet", "refiner": "--refiner", "refiner_switch": "--refiner-switch",
	"vae": "--vae", "init_image": "--init-image", "strength": "--strength", "mask_image": "--mask",
	"mask_blur": "--mask-blur", "mask_padding": "--mask-padding", "upscaler": "--upscaler", "upscale": "--upscale",
	"hires_scale": "--hires", "hires_steps": "--hires-steps", "hires_strength": "--hires-strength",
	"upscale_only": "--upscale-only",
}

var reIndexed = regexp.MustCompile(`^(\w+)\[\d+\]`)

// flagName returns the flag for a request field ("loras[1].weight" → "--lora").
func flagName(field string) string {
	if m := reIndexed.FindStringSubmatch(field); m != nil {
		field = m[1]
	}
	if f, ok := flagForField[field]; ok {
		return f
	}
	return field
}

// loraList is the repeatable --lora PATH[:WEIGHT].
type loraList []request.LoRA

func (l *loraList) String() string {
	if l == nil {
		return ""
	}
	parts := make([]string, len(*l))
	for i, x := range *l {
		parts[i] = x.Path + ":" + strconv.FormatFloat(x.Weight, 'g', -1, 64)
	}
	return strings.Join(parts, " ")
}

func (l *loraList) Set(s string) error {
	s = strings.TrimSpace(s)
	lo := request.LoRA{Path: s, Weight: 1}
	// The weight follows the last colon; a path may hold colons itself
	// (C:\…), so a tail that is not a number belongs to the path.
	if i := strings.LastIndex(s, ":"); i >= 0 {
		if w, err := strconv.ParseFloat(strings.TrimSpace(s[i+1:]), 64); err == nil {
			lo = request.LoRA{Path: strings.TrimSpace(s[:i]), Weight: w}
		}
	}
	if lo.Path == "" {
		return errors.New("want PATH[:WEIGHT], e.g. style.safetensors:0.8")
	}
	*l = append(*l, lo)
	return nil
}

// controlNetList is the repeatable --controlnet key=value,….
type controlNetList []request.ControlNet

func (c *controlNetList) String() string {
	if c == nil {
		return ""
	}
	parts := make([]string, len(*c))
	for i, x := range *c {
		parts[i] = fmt.Sprintf("type=%s,model=%s,image=%s,scale=%g,start=%g,end=%g,low=%d,high=%d",
			x.Type, x.Model, x.Image, x.Scale, x.Start, x.End, x.CannyLow, x.CannyHigh)
	}
	return strings.Join(parts, " ")
}

func (c *controlNetList) Set(s string) error {
	u := request.DefaultControlNet()
	u.Type, u.Model = "", ""
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return fmt.Errorf("%q is not key=value (keys: type, model, image, scale, start, end, low, high)", kv)
		}
		num := func() (float64, error) {
			x, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, fmt.Errorf("%s=%q is not a number", k, v)
			}
			return x, nil
		}
		var err error
		switch k {
		case "type":
			u.Type = v
		case "model":
			u.Model = v
		case "image":
			u.Image = v
		case "scale":
			u.Scale, err = num()
		case "start":
			u.Start, err = num()
		case "end":
			u.End, err = num()
		case "low", "canny_low":
			var x float64
			if x, err = num(); err == nil {
				u.CannyLow = int(x)
			}
		case "high", "canny_high":
			var x float64
			if x, err = num(); err == nil {
				u.CannyHigh = int(x)
			}
		default:
			return fmt.Errorf("unknown key %q (keys: type, model, image, scale, start, end, low, high)", k)
		}
		if err != nil {
			return err
		}
	}
	if u.Type == "" {
		u.Type = "canny"
	}
	if u.Model == "" {
		return fmt.Errorf("model=M is required: a ControlNet folder, a .safetensors file or %q", request.TinyControlNet)
	}
	if u.Image == "" {
		return errors.New("image=PATH is required")
	}
	*c = append(*c, u)
	return nil
}

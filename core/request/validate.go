package request

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"unicode"

	"atelier/core/spec"
)

// FieldError is a validation failure that names the offending field.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s: %s", e.Field, e.Message) }

// ValidationError holds every field error of a request.
type ValidationError struct{ Fields []*FieldError }

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		parts[i] = f.Error()
	}
	return "invalid request: " + strings.Join(parts, "; ")
}

// Field returns the error for one field, or nil.
func (e *ValidationError) Field(name string) *FieldError {
	for _, f := range e.Fields {
		if f.Field == name {
			return f
		}
	}
	return nil
}

// AsValidation extracts a *ValidationError from err.
func AsValidation(err error) (*ValidationError, bool) {
	var v *ValidationError
	ok := errors.As(err, &v)
	return v, ok
}

// fieldErrors collects a request's field errors, in the order of the form.
type fieldErrors []*FieldError

func (e *fieldErrors) add(field, format string, args ...any) {
	*e = append(*e, &FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
}

// Validate checks every field against the protocol's rules, one form section
// after another. A seed of -1 means "random" and is allowed here; ResolveSeed
// replaces it before sending. It does not touch the disk: Prepare does that.
func (r *Request) Validate() error {
	var errs fieldErrors
	r.validateBase(&errs)
	r.validateLoRAs(&errs)
	r.validateControlNets(&errs)
	r.validateRefiner(&errs)
	r.validateVAE(&errs)
	r.validateImg2Img(&errs)
	r.validateUpscale(&errs)
	r.validateHires(&errs)
	r.validateUpscaleOnly(&errs)
	r.validateText(&errs)
	if len(errs) > 0 {
		return &ValidationError{Fields: errs}
	}
	return nil
}

// ValidateWire checks r as the worker receives it: every rule of Validate, plus a seed
// already resolved (not -1, so that the seed is recorded) and an absolute output_dir
// (the worker has no working directory the app could rely on).
func (r *Request) ValidateWire() error {
	var fields []*FieldError
	if err := r.Validate(); err != nil {
		v, ok := AsValidation(err)
		if !ok {
			return err
		}
		fields = append(fields, v.Fields...)
	}
	if r.Seed == -1 {
		fields = append(fields, &FieldError{Field: "seed",
			Message: fmt.Sprintf("must be resolved to a number between 0 and %d before the request is sent", MaxSeed)})
	}
	if r.OutputDir == "" || !filepath.IsAbs(r.OutputDir) {
		fields = append(fields, &FieldError{Field: "output_dir",
			Message: fmt.Sprintf("must be an absolute folder path, got %q", r.OutputDir)})
	}
	if len(fields) > 0 {
		return &ValidationError{Fields: fields}
	}
	return nil
}

// validateBase checks the prompt, the model, the sampler and the image size.
func (r *Request) validateBase(errs *fieldErrors) {
	if strings.TrimSpace(r.Prompt) == "" {
		errs.add("prompt", "must not be empty")
	}
	if strings.TrimSpace(r.Model) == "" {
		errs.add("model", "must name a model: %q or a path to a diffusers folder", TinyModel)
	}
	if r.Scheduler != "" && !slices.Contains(Schedulers, r.Scheduler) {
		errs.add("scheduler", "unknown scheduler %q (known: %s)", r.Scheduler, strings.Join(Schedulers, ", "))
	}
	if r.Steps < MinSteps || r.Steps > MaxSteps {
		errs.add("steps", "must be between %d and %d, got %d", MinSteps, MaxSteps, r.Steps)
	}
	if r.CFG < MinCFG || r.CFG > MaxCFG || r.CFG != r.CFG {
		errs.add("cfg", "must be between %g and %g, got %g", MinCFG, MaxCFG, r.CFG)
	}
	for _, d := range []struct {
		name string
		v    int
	}{{"width", r.Width}, {"height", r.Height}} {
		if d.v < MinSize || d.v > MaxSize || d.v%SizeMultiple != 0 {
			errs.add(d.name, "must be a multiple of %d between %d and %d, got %d", SizeMultiple, MinSize, MaxSize, d.v)
		}
	}
	if r.Seed < -1 || r.Seed > MaxSeed {
		errs.add("seed", "must be -1 (random) or between 0 and %d, got %d", MaxSeed, r.Seed)
	}
	if r.BatchSize != 0 && (r.BatchSize < MinBatch || r.BatchSize > MaxBatch) {
		errs.add("batch_size", "must be between %d and %d, got %d", MinBatch, MaxBatch, r.BatchSize)
	}
	if r.PreviewEvery < 0 {
		errs.add("preview_every", "must be 0 (off) or a positive step interval, got %d", r.PreviewEvery)
	}
	if ext := PickleExt(r.Model); ext != "" {
		errs.add("model", "%s is a pickle checkpoint (%s), which can run arbitrary code when loaded, so Atelier never loads one: "+
			"use the model's .safetensors file or diffusers folder", strings.TrimSpace(r.Model), ext)
	}
	if !slices.Contains(Schedules, r.Schedule) {
		errs.add("schedule", "unknown schedule %q (known: karras, exponential, beta, or empty for the scheduler's own)", r.Schedule)
	}
}

func (r *Request) validateLoRAs(errs *fieldErrors) {
	if len(r.LoRAs) > MaxLoRAs {
		errs.add("loras", "at most %d LoRAs, got %d", MaxLoRAs, len(r.LoRAs))
	}
	for i, l := range r.LoRAs {
		if msg := checkWeightsPath(l.Path, TinyLoRA, "LoRA"); msg != "" {
			errs.add(fmt.Sprintf("loras[%d].path", i), "%s", msg)
		}
		if badFloat(l.Weight) || l.Weight < MinLoRAWeight || l.Weight > MaxLoRAWeight {
			errs.add(fmt.Sprintf("loras[%d].weight", i), "must be between %g and %g, got %g", MinLoRAWeight, MaxLoRAWeight, l.Weight)
		}
	}
}

func (r *Request) validateControlNets(errs *fieldErrors) {
	if len(r.ControlNets) > MaxControlNets {
		errs.add("controlnets", "at most %d ControlNets, got %d", MaxControlNets, len(r.ControlNets))
	}
	for i, c := range r.ControlNets {
		c.validate(fmt.Sprintf("controlnets[%d].", i), errs)
	}
}

// validate checks one unit; prefix names it ("controlnets[0].").
func (c *ControlNet) validate(prefix string, errs *fieldErrors) {
	if !slices.Contains(ControlNetTypes, c.Type) {
		errs.add(prefix+"type", "unknown type %q (known: %s)", c.Type, strings.Join(ControlNetTypes, ", "))
	}
	if msg := checkWeightsPath(c.Model, TinyControlNet, "ControlNet model"); msg != "" {
		errs.add(prefix+"model", "%s", msg)
	}
	if strings.TrimSpace(c.Image) == "" {
		errs.add(prefix+"image", "must name a control image")
	}
	if badFloat(c.Scale) || c.Scale < MinControlScale || c.Scale > MaxControlScale {
		errs.add(prefix+"scale", "must be between %g and %g, got %g", MinControlScale, MaxControlScale, c.Scale)
	}
	if badFloat(c.Start) || c.Start < 0 || c.Start >= 1 {
		errs.add(prefix+"start", "must be at least 0 and below 1, got %g", c.Start)
	}
	if badFloat(c.End) || c.End <= 0 || c.End > 1 {
		errs.add(prefix+"end", "must be above 0 and at most 1, got %g", c.End)
	} else if c.End <= c.Start {
		errs.add(prefix+"end", "must be after start (%g), got %g", c.Start, c.End)
	}
	if c.CannyLow < MinCanny || c.CannyLow > MaxCanny {
		errs.add(prefix+"canny_low", "must be between %d and %d, got %d", MinCanny, MaxCanny, c.CannyLow)
	}
	if c.CannyHigh < MinCanny || c.CannyHigh > MaxCanny {
		errs.add(prefix+"canny_high", "must be between %d and %d, got %d", MinCanny, MaxCanny, c.CannyHigh)
	} else if c.CannyLow >= MinCanny && c.CannyLow <= MaxCanny && c.CannyHigh < c.CannyLow {
		errs.add(prefix+"canny_high", "must not be below canny_low (%d), got %d", c.CannyLow, c.CannyHigh)
	}
}

func (r *Request) validateRefiner(errs *fieldErrors) {
	if r.Refiner != "" {
		if msg := checkWeightsPath(r.Refiner, TinyRefiner, "refiner"); msg != "" {
			errs.add("refiner", "%s", msg)
		}
	}
	// Without a refiner the switch does nothing, and 0-1 is accepted (protocol).
	if badFloat(r.RefinerSwitch) || r.RefinerSwitch < 0 || r.RefinerSwitch > 1 ||
		(r.Refiner != "" && r.RefinerSwitch >= 1) {
		errs.add("refiner_switch", "must be above 0 and below 1, got %g", r.RefinerSwitch)
	}
}

func (r *Request) validateVAE(errs *fieldErrors) {
	if r.VAE != "" {
		if msg := checkWeightsPath(r.VAE, TinyVAE, "VAE"); msg != "" {
			errs.add("vae", "%s", msg)
		}
	}
}

// validateImg2Img checks the init image's strength and the inpainting mask.
func (r *Request) validateImg2Img(errs *fieldErrors) {
	if badFloat(r.Strength) || r.Strength < 0 || r.Strength > 1 {
		errs.add("strength", "must be above 0 and at most 1, got %g", r.Strength)
	} else if r.InitImage != "" && r.Strength != 0 && int(float64(r.Steps)*r.Strength) < 1 && r.Steps >= MinSteps {
		errs.add("strength", "steps × strength must come to at least one step: %d × %g is less than 1", r.Steps, r.Strength)
	}
	if r.MaskImage != "" && r.InitImage == "" {
		errs.add("mask_image", "needs an init image: a mask says which part of the init image to redraw")
	}
	if r.MaskBlur != nil && (*r.MaskBlur < MinMaskBlur || *r.MaskBlur > MaxMaskBlur) {
		errs.add("mask_blur", "must be between %d and %d pixels, got %d", MinMaskBlur, MaxMaskBlur, *r.MaskBlur)
	}
	if r.MaskPadding < MinMaskPadding || r.MaskPadding > MaxMaskPadding {
		errs.add("mask_padding", "must be between %d and %d pixels, got %d", MinMaskPadding, MaxMaskPadding, r.MaskPadding)
	}
}

func (r *Request) validateUpscale(errs *fieldErrors) {
	if r.Upscaler != "" && r.Upscaler != LanczosUpscaler && r.Upscaler != TinyUpscaler {
		if ext := PickleExt(r.Upscaler); ext != "" {
			errs.add("upscaler", "%s is a pickle file (%s), which can run arbitrary code when loaded, so Atelier never loads one: use a .safetensors file", r.Upscaler, ext)
		} else if !strings.HasSuffix(strings.ToLower(r.Upscaler), ".safetensors") {
			errs.add("upscaler", "must be %q, %q or a .safetensors upscaler model, got %q", LanczosUpscaler, TinyUpscaler, r.Upscaler)
		}
	}
	if r.Upscale != 0 && (badFloat(r.Upscale) || r.Upscale < MinUpscale || r.Upscale > MaxUpscale) {
		errs.add("upscale", "must be between %g and %g, got %g", MinUpscale, MaxUpscale, r.Upscale)
	}
}

func (r *Request) validateHires(errs *fieldErrors) {
	if badFloat(r.HiresScale) || (r.HiresScale != 0 && (r.HiresScale < MinHires || r.HiresScale > MaxHires)) {
		errs.add("hires_scale", "must be 0 (off) or between %g and %g, got %g", MinHires, MaxHires, r.HiresScale)
	} else if r.HiresScale != 0 && r.InitImage != "" {
		errs.add("hires_scale", "is for text-to-image: with an init image, ask for the larger size directly")
	} else if w, h := r.HiresSize(); r.HiresScale != 0 && max(w, h) > MaxSize {
		errs.add("hires_scale", "makes the image %dx%d, past the largest size (%d)", w, h, MaxSize)
	}
	if r.HiresSteps < 0 || r.HiresSteps > MaxSteps {
		errs.add("hires_steps", "must be 0 (the job's steps) or between %d and %d, got %d", MinSteps, MaxSteps, r.HiresSteps)
	}
	if badFloat(r.HiresStrength) || r.HiresStrength < 0 || r.HiresStrength > 1 {
		errs.add("hires_strength", "must be above 0 and at most 1, got %g", r.HiresStrength)
	}
}

// validateUpscaleOnly checks an Extras request, which enlarges without generating.
func (r *Request) validateUpscaleOnly(errs *fieldErrors) {
	if r.UpscaleOnly && r.InitImage == "" {
		errs.add("upscale_only", "needs an init image: the picture to enlarge")
	} else if r.UpscaleOnly && r.Upscaler == "" {
		errs.add("upscale_only", "needs an upscaler: %q or an upscaler model", LanczosUpscaler)
	}
}

// validateText refuses control characters, which the PNG's tEXt chunk may not
// carry (a NUL ends its text): the prompts may hold newlines and tabs, the
// names of files (which the PNG's settings name too) nothing of the kind.
func (r *Request) validateText(errs *fieldErrors) {
	for _, f := range []struct{ name, v string }{{"prompt", r.Prompt}, {"negative_prompt", r.NegativePrompt}} {
		if c, at, ok := controlChar(f.v, true); ok {
			errs.add(f.name, "must not hold control characters other than newline and tab: U+%04X at character %d", c, at)
		}
	}
	paths := []struct{ name, v string }{{"model", r.Model}, {"refiner", r.Refiner}, {"vae", r.VAE},
		{"init_image", r.InitImage}, {"mask_image", r.MaskImage}, {"upscaler", r.Upscaler}}
	for i, l := range r.LoRAs {
		paths = append(paths, struct{ name, v string }{fmt.Sprintf("loras[%d].path", i), l.Path})
	}
	for i, c := range r.ControlNets {
		paths = append(paths, struct{ name, v string }{fmt.Sprintf("controlnets[%d].model", i), c.Model},
			struct{ name, v string }{fmt.Sprintf("controlnets[%d].image", i), c.Image})
	}
	for _, f := range paths {
		if c, at, ok := controlChar(f.v, false); ok {
			errs.add(f.name, "must not hold control characters: U+%04X at character %d", c, at)
		}
	}
}

// controlChar finds the first control character of s (newline and tab
// allowed when text is true) and its position, counted in characters from 1.
func controlChar(s string, text bool) (rune, int, bool) {
	at := 0
	for _, c := range s {
		at++
		if unicode.IsControl(c) && !(text && (c == '\n' || c == '\t')) {
			return c, at, true
		}
	}
	return 0, 0, false
}

func badFloat(v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) }

// pickleExts are checkpoint formats that run arbitrary code when loaded.
var pickleExts = spec.PickleExts

// PickleExt returns the pickle extension of path, or "".
func PickleExt(path string) string {
	ext := strings.ToLower(filepath.Ext(strings.TrimSpace(path)))
	if slices.Contains(pickleExts, ext) {
		return ext
	}
	return ""
}

// checkWeightsPath reports what is wrong with a path to weights, or "".
func checkWeightsPath(path, tiny, what string) string {
	path = strings.TrimSpace(path)
	if path == "" {
		return fmt.Sprintf("must name a %s: %q or a path", what, tiny)
	}
	if ext := PickleExt(path); ext != "" {
		return fmt.Sprintf("%s is a pickle file (%s), which can run arbitrary code when loaded, so Atelier never loads one: use a .safetensors file", path, ext)
	}
	return ""
}

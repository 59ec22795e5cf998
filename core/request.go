package core

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// TinyModel names the generated demo model: noise images, for trying the app.
const TinyModel = "tiny"

// Limits of a request, shared by validation, the UI and the CLI help.
const (
	MinSteps, MaxSteps       = 1, 150
	MinCFG, MaxCFG           = 0.0, 30.0
	MinSize, MaxSize         = 64, 4096
	SizeMultiple             = 8
	MinBatch, MaxBatch       = 1, 8
	MaxSeed            int64 = 1<<53 - 1

	MinLoRAWeight, MaxLoRAWeight   = -5.0, 5.0
	MaxLoRAs                       = 16
	MaxControlNets                 = 4
	MinControlScale                = 0.0
	MaxControlScale                = 2.0
	DefaultControlScale            = 1.0
	MinCanny, MaxCanny             = 0, 255
	DefaultCannyLow                = 100
	DefaultCannyHigh               = 200
	DefaultRefinerSwitch           = 0.8 // exclusive range 0..1
	DefaultStrength                = 0.75
	MinMaskBlur, MaxMaskBlur       = 0, 64
	DefaultMaskBlur                = 4
	MinMaskPadding, MaxMaskPadding = 0, 1024
	MinUpscale, MaxUpscale         = 1.0, 4.0
	DefaultUpscale                 = 2.0
	MinHires, MaxHires             = 1.0, 4.0
	DefaultHiresScale              = 1.5 // what the form offers when the pass is turned on
	DefaultHiresStrength           = 0.5
	MinBatchCount, MaxBatchCount   = 1, 100
)

// Names of the tiny generated demo parts, accepted wherever a path is.
const (
	TinyLoRA        = "tiny-lora"
	TinyControlNet  = "tiny-controlnet"
	TinyRefiner     = "tiny-refiner"
	TinyVAE         = "tiny-vae"
	LanczosUpscaler = "lanczos"
	TinyUpscaler    = "tiny-upscaler"    // a 2x ESRGAN-family model
	TinySingleFile  = "tiny-single-file" // the tiny model as one .safetensors checkpoint
)

// Schedulers are the samplers protocol v1 knows, in menu order; the worker's
// hello lists what it really supports. SamplerNames gives A1111's names.
var Schedulers = []string{"euler", "euler_a", "dpmpp_2m", "dpmpp_sde", "ddim", "heun", "dpm2", "dpm2_a", "lms", "unipc"}

// SamplerNames maps a scheduler to AUTOMATIC1111's sampler name.
var SamplerNames = map[string]string{
	"dpmpp_2m": "DPM++ 2M", "dpmpp_sde": "DPM++ SDE", "ddim": "DDIM", "euler": "Euler",
	"euler_a": "Euler a", "heun": "Heun", "dpm2": "DPM2", "dpm2_a": "DPM2 a", "lms": "LMS", "unipc": "UniPC",
}

// Schedules are the sigma schedules; "" is the scheduler's own default.
var Schedules = []string{"", "karras", "exponential", "beta"}

// ScheduleNames maps a schedule to A1111's "Schedule type" name.
var ScheduleNames = map[string]string{"": "Automatic", "karras": "Karras", "exponential": "Exponential", "beta": "Beta"}

// ControlNetTypes are the control kinds protocol v1 knows.
var ControlNetTypes = []string{"canny", "depth", "pose", "lineart", "scribble", "tile", "softedge", "other"}

// LoRA is one LoRA applied to the model.
type LoRA struct {
	Path   string  `json:"path"`
	Weight float64 `json:"weight"`
}

// UnmarshalJSON reads a missing weight as 1, as the worker does.
func (l *LoRA) UnmarshalJSON(b []byte) error {
	type plain LoRA
	p := plain{Weight: 1}
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*l = LoRA(p)
	return nil
}

// ControlNet is one ControlNet unit. Every number is always sent (zero is a
// valid value of each); DefaultControlNet and UnmarshalJSON fill the defaults.
type ControlNet struct {
	Type      string  `json:"type"`
	Model     string  `json:"model"`
	Image     string  `json:"image"`
	Scale     float64 `json:"scale"`
	Start     float64 `json:"start"`
	End       float64 `json:"end"`
	CannyLow  int     `json:"canny_low"`
	CannyHigh int     `json:"canny_high"`
}

// DefaultControlNet is a unit with every default filled in.
func DefaultControlNet() ControlNet {
	return ControlNet{Type: "canny", Model: TinyControlNet, Scale: DefaultControlScale, Start: 0, End: 1,
		CannyLow: DefaultCannyLow, CannyHigh: DefaultCannyHigh}
}

// UnmarshalJSON fills the defaults of fields the JSON leaves out, so that a
// unit without "scale" or "end" is not silently switched off.
func (c *ControlNet) UnmarshalJSON(b []byte) error {
	type plain ControlNet
	p := plain(DefaultControlNet())
	p.Type, p.Model = "", ""
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*c = ControlNet(p)
	return nil
}

// Request is one generation job, as sent to the worker (docs/protocol.md).
type Request struct {
	Prompt         string  `json:"prompt"`
	NegativePrompt string  `json:"negative_prompt,omitempty"`
	Model          string  `json:"model"`
	Scheduler      string  `json:"scheduler,omitempty"`
	Steps          int     `json:"steps"`
	CFG            float64 `json:"cfg"`
	Width          int     `json:"width"`
	Height         int     `json:"height"`
	Seed           int64   `json:"seed"`
	BatchSize      int     `json:"batch_size,omitempty"`
	OutputDir      string  `json:"output_dir,omitempty"`
	PreviewEvery   int     `json:"preview_every,omitempty"`

	// Sampling: the sigma schedule ("" = the scheduler's own).
	Schedule string `json:"schedule,omitempty"`
	// LoRAs applied to the base model, in order.
	LoRAs []LoRA `json:"loras,omitempty"`
	// ControlNets guiding the base model.
	ControlNets []ControlNet `json:"controlnets,omitempty"`
	// Refiner model and the fraction of steps the base runs (0 = DefaultRefinerSwitch).
	Refiner       string  `json:"refiner,omitempty"`
	RefinerSwitch float64 `json:"refiner_switch,omitempty"`
	// VAE replacing the model's own.
	VAE string `json:"vae,omitempty"`
	// img2img: the starting image and how much of it is redrawn (0 = DefaultStrength).
	InitImage string  `json:"init_image,omitempty"`
	Strength  float64 `json:"strength,omitempty"`
	// Inpainting: white pixels of the mask are redrawn. MaskBlur nil = DefaultMaskBlur.
	MaskImage   string `json:"mask_image,omitempty"`
	MaskBlur    *int   `json:"mask_blur,omitempty"`
	MaskPadding int    `json:"mask_padding,omitempty"`
	// Upscaling after generation (Upscale 0 = DefaultUpscale).
	Upscaler string  `json:"upscaler,omitempty"`
	Upscale  float64 `json:"upscale,omitempty"`
	// Hires fix: the text-to-image result enlarged by HiresScale (0 = off) and
	// redrawn by img2img with HiresSteps (0 = Steps) at HiresStrength
	// (0 = DefaultHiresStrength).
	HiresScale    float64 `json:"hires_scale,omitempty"`
	HiresSteps    int     `json:"hires_steps,omitempty"`
	HiresStrength float64 `json:"hires_strength,omitempty"`
	// UpscaleOnly enlarges InitImage with Upscaler by Upscale (A1111's Extras):
	// nothing is generated and no model loads.
	UpscaleOnly bool `json:"upscale_only,omitempty"`
}

// HiresSize is the size of the hires pass: Width×Height scaled by HiresScale and
// rounded to a multiple of SizeMultiple, as the worker makes it.
func (r *Request) HiresSize() (int, int) {
	one := func(v int) int {
		return max(SizeMultiple, int(math.Round(float64(v)*r.HiresScale/SizeMultiple))*SizeMultiple)
	}
	return one(r.Width), one(r.Height)
}

// IntPtr returns a pointer to v, for optional int fields such as MaskBlur.
func IntPtr(v int) *int { return &v }

// DefaultRequest is what a new form or a bare CLI call starts from.
func DefaultRequest() Request {
	return Request{Model: TinyModel, Scheduler: "euler", Steps: 30, CFG: 5,
		Width: 1024, Height: 1024, Seed: -1, BatchSize: 1}
}

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

// Validate checks every field against the protocol's rules. A seed of -1 means
// "random" and is allowed here; ResolveSeed replaces it before sending.
// It does not touch the disk: CheckModel does that.
func (r *Request) Validate() error {
	var errs []*FieldError
	add := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
	}
	if strings.TrimSpace(r.Prompt) == "" {
		add("prompt", "must not be empty")
	}
	if strings.TrimSpace(r.Model) == "" {
		add("model", "must name a model: %q or a path to a diffusers folder", TinyModel)
	}
	if r.Scheduler != "" && !contains(Schedulers, r.Scheduler) {
		add("scheduler", "unknown scheduler %q (known: %s)", r.Scheduler, strings.Join(Schedulers, ", "))
	}
	if r.Steps < MinSteps || r.Steps > MaxSteps {
		add("steps", "must be between %d and %d, got %d", MinSteps, MaxSteps, r.Steps)
	}
	if r.CFG < MinCFG || r.CFG > MaxCFG || r.CFG != r.CFG {
		add("cfg", "must be between %g and %g, got %g", MinCFG, MaxCFG, r.CFG)
	}
	for _, d := range []struct {
		name string
		v    int
	}{{"width", r.Width}, {"height", r.Height}} {
		if d.v < MinSize || d.v > MaxSize || d.v%SizeMultiple != 0 {
			add(d.name, "must be a multiple of %d between %d and %d, got %d", SizeMultiple, MinSize, MaxSize, d.v)
		}
	}
	if r.Seed < -1 || r.Seed > MaxSeed {
		add("seed", "must be -1 (random) or between 0 and %d, got %d", MaxSeed, r.Seed)
	}
	if r.BatchSize != 0 && (r.BatchSize < MinBatch || r.BatchSize > MaxBatch) {
		add("batch_size", "must be between %d and %d, got %d", MinBatch, MaxBatch, r.BatchSize)
	}
	if r.PreviewEvery < 0 {
		add("preview_every", "must be 0 (off) or a positive step interval, got %d", r.PreviewEvery)
	}
	r.validateFeatures(add)
	if len(errs) > 0 {
		return &ValidationError{Fields: errs}
	}
	return nil
}

// AsValidation extracts a *ValidationError from err.
func AsValidation(err error) (*ValidationError, bool) {
	var v *ValidationError
	ok := errors.As(err, &v)
	return v, ok
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func badFloat(v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) }

// PickleExt returns the pickle extension of path, or "".
func PickleExt(path string) string {
	ext := strings.ToLower(filepath.Ext(strings.TrimSpace(path)))
	for _, p := range pickleExts {
		if ext == p {
			return ext
		}
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

// validateFeatures checks the optional SDXL features: sampling schedule,
// LoRAs, ControlNets, refiner, VAE, img2img/inpainting and upscaling.
func (r *Request) validateFeatures(add func(field, format string, args ...any)) {
	if ext := PickleExt(r.Model); ext != "" {
		add("model", "%s is a pickle checkpoint (%s), which can run arbitrary code when loaded, so Atelier never loads one: "+
			"use the model's .safetensors file or diffusers folder", strings.TrimSpace(r.Model), ext)
	}
	if !contains(Schedules, r.Schedule) {
		add("schedule", "unknown schedule %q (known: karras, exponential, beta, or empty for the scheduler's own)", r.Schedule)
	}
	if len(r.LoRAs) > MaxLoRAs {
		add("loras", "at most %d LoRAs, got %d", MaxLoRAs, len(r.LoRAs))
	}
	for i, l := range r.LoRAs {
		if msg := checkWeightsPath(l.Path, TinyLoRA, "LoRA"); msg != "" {
			add(fmt.Sprintf("loras[%d].path", i), "%s", msg)
		}
		if badFloat(l.Weight) || l.Weight < MinLoRAWeight || l.Weight > MaxLoRAWeight {
			add(fmt.Sprintf("loras[%d].weight", i), "must be between %g and %g, got %g", MinLoRAWeight, MaxLoRAWeight, l.Weight)
		}
	}
	if len(r.ControlNets) > MaxControlNets {
		add("controlnets", "at most %d ControlNets, got %d", MaxControlNets, len(r.ControlNets))
	}
	for i, c := range r.ControlNets {
		name := func(f string) string { return fmt.Sprintf("controlnets[%d].%s", i, f) }
		if !contains(ControlNetTypes, c.Type) {
			add(name("type"), "unknown type %q (known: %s)", c.Type, strings.Join(ControlNetTypes, ", "))
		}
		if msg := checkWeightsPath(c.Model, TinyControlNet, "ControlNet model"); msg != "" {
			add(name("model"), "%s", msg)
		}
		if strings.TrimSpace(c.Image) == "" {
			add(name("image"), "must name a control image")
		}
		if badFloat(c.Scale) || c.Scale < MinControlScale || c.Scale > MaxControlScale {
			add(name("scale"), "must be between %g and %g, got %g", MinControlScale, MaxControlScale, c.Scale)
		}
		if badFloat(c.Start) || c.Start < 0 || c.Start >= 1 {
			add(name("start"), "must be at least 0 and below 1, got %g", c.Start)
		}
		if badFloat(c.End) || c.End <= 0 || c.End > 1 {
			add(name("end"), "must be above 0 and at most 1, got %g", c.End)
		} else if c.End <= c.Start {
			add(name("end"), "must be after start (%g), got %g", c.Start, c.End)
		}
		if c.CannyLow < MinCanny || c.CannyLow > MaxCanny {
			add(name("canny_low"), "must be between %d and %d, got %d", MinCanny, MaxCanny, c.CannyLow)
		}
		if c.CannyHigh < MinCanny || c.CannyHigh > MaxCanny {
			add(name("canny_high"), "must be between %d and %d, got %d", MinCanny, MaxCanny, c.CannyHigh)
		} else if c.CannyLow >= MinCanny && c.CannyLow <= MaxCanny && c.CannyHigh < c.CannyLow {
			add(name("canny_high"), "must not be below canny_low (%d), got %d", c.CannyLow, c.CannyHigh)
		}
	}
	if r.Refiner != "" {
		if msg := checkWeightsPath(r.Refiner, TinyRefiner, "refiner"); msg != "" {
			add("refiner", "%s", msg)
		}
	}
	// Without a refiner the switch does nothing, and 0-1 is accepted (protocol).
	if badFloat(r.RefinerSwitch) || r.RefinerSwitch < 0 || r.RefinerSwitch > 1 ||
		(r.Refiner != "" && r.RefinerSwitch >= 1) {
		add("refiner_switch", "must be above 0 and below 1, got %g", r.RefinerSwitch)
	}
	if r.VAE != "" {
		if msg := checkWeightsPath(r.VAE, TinyVAE, "VAE"); msg != "" {
			add("vae", "%s", msg)
		}
	}
	if badFloat(r.Strength) || r.Strength < 0 || r.Strength > 1 {
		add("strength", "must be above 0 and at most 1, got %g", r.Strength)
	} else if r.InitImage != "" && r.Strength != 0 && int(float64(r.Steps)*r.Strength) < 1 && r.Steps >= MinSteps {
		add("strength", "steps × strength must come to at least one step: %d × %g is less than 1", r.Steps, r.Strength)
	}
	if r.MaskImage != "" && r.InitImage == "" {
		add("mask_image", "needs an init image: a mask says which part of the init image to redraw")
	}
	if r.MaskBlur != nil && (*r.MaskBlur < MinMaskBlur || *r.MaskBlur > MaxMaskBlur) {
		add("mask_blur", "must be between %d and %d pixels, got %d", MinMaskBlur, MaxMaskBlur, *r.MaskBlur)
	}
	if r.MaskPadding < MinMaskPadding || r.MaskPadding > MaxMaskPadding {
		add("mask_padding", "must be between %d and %d pixels, got %d", MinMaskPadding, MaxMaskPadding, r.MaskPadding)
	}
	if r.Upscaler != "" && r.Upscaler != LanczosUpscaler && r.Upscaler != TinyUpscaler {
		if ext := PickleExt(r.Upscaler); ext != "" {
			add("upscaler", "%s is a pickle file (%s), which can run arbitrary code when loaded, so Atelier never loads one: use a .safetensors file", r.Upscaler, ext)
		} else if !strings.HasSuffix(strings.ToLower(r.Upscaler), ".safetensors") {
			add("upscaler", "must be %q, %q or a .safetensors upscaler model, got %q", LanczosUpscaler, TinyUpscaler, r.Upscaler)
		}
	}
	if r.Upscale != 0 && (badFloat(r.Upscale) || r.Upscale < MinUpscale || r.Upscale > MaxUpscale) {
		add("upscale", "must be between %g and %g, got %g", MinUpscale, MaxUpscale, r.Upscale)
	}
	r.validateHires(add)
	if r.UpscaleOnly && r.InitImage == "" {
		add("upscale_only", "needs an init image: the picture to enlarge")
	} else if r.UpscaleOnly && r.Upscaler == "" {
		add("upscale_only", "needs an upscaler: %q or an upscaler model", LanczosUpscaler)
	}
}

func (r *Request) validateHires(add func(field, format string, args ...any)) {
	if badFloat(r.HiresScale) || (r.HiresScale != 0 && (r.HiresScale < MinHires || r.HiresScale > MaxHires)) {
		add("hires_scale", "must be 0 (off) or between %g and %g, got %g", MinHires, MaxHires, r.HiresScale)
	} else if r.HiresScale != 0 && r.InitImage != "" {
		add("hires_scale", "is for text-to-image: with an init image, ask for the larger size directly")
	} else if w, h := r.HiresSize(); r.HiresScale != 0 && max(w, h) > MaxSize {
		add("hires_scale", "makes the image %dx%d, past the largest size (%d)", w, h, MaxSize)
	}
	if r.HiresSteps < 0 || r.HiresSteps > MaxSteps {
		add("hires_steps", "must be 0 (the job's steps) or between %d and %d, got %d", MinSteps, MaxSteps, r.HiresSteps)
	}
	if badFloat(r.HiresStrength) || r.HiresStrength < 0 || r.HiresStrength > 1 {
		add("hires_strength", "must be above 0 and at most 1, got %g", r.HiresStrength)
	}
}

// ResolvePaths checks that every file the request names (LoRAs, ControlNet
// models and images, refiner, VAE, init image, mask, upscaler) exists, and
// makes each path absolute, since the worker runs in another folder. Tiny
// names and "lanczos" pass through. Errors are *JobError naming the field.
func (r *Request) ResolvePaths() error {
	var firstErr error
	fix := func(field string, p *string, tiny string, dirOK bool) {
		if firstErr != nil || *p == "" || *p == tiny || (field == "upscaler" && *p == TinyUpscaler) {
			return
		}
		abs, err := ResolveFile(*p)
		if err == nil {
			var fi os.FileInfo
			if fi, err = os.Stat(abs); err == nil && fi.IsDir() && !dirOK {
				err = fmt.Errorf("%s is a folder, not a file", abs)
			}
		}
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				err = fmt.Errorf("%s does not exist", abs)
			}
			firstErr = &JobError{Code: ErrInvalidRequest, Field: field, Message: err.Error()}
			return
		}
		*p = abs
	}
	for i := range r.LoRAs {
		fix(fmt.Sprintf("loras[%d].path", i), &r.LoRAs[i].Path, TinyLoRA, false)
	}
	for i := range r.ControlNets {
		fix(fmt.Sprintf("controlnets[%d].model", i), &r.ControlNets[i].Model, TinyControlNet, true)
		fix(fmt.Sprintf("controlnets[%d].image", i), &r.ControlNets[i].Image, "", false)
	}
	fix("refiner", &r.Refiner, TinyRefiner, true)
	fix("vae", &r.VAE, TinyVAE, true)
	fix("init_image", &r.InitImage, "", false)
	fix("mask_image", &r.MaskImage, "", false)
	fix("upscaler", &r.Upscaler, LanczosUpscaler, false)
	return firstErr
}

// ResolveFile expands ~/ and makes path absolute.
func ResolveFile(path string) (string, error) {
	path = strings.TrimSpace(path)
	if rest, ok := strings.CutPrefix(path, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			path = filepath.Join(home, rest)
		}
	}
	return filepath.Abs(path)
}

// ExpandBatchCount turns one request into count jobs run one after another:
// job k uses seed + k*batch_size, so that every image of every job has its
// own seed. A random seed (-1) is resolved once, first.
func ExpandBatchCount(r Request, count int) ([]Request, error) {
	if count < MinBatchCount || count > MaxBatchCount {
		return nil, &ValidationError{Fields: []*FieldError{{Field: "batch_count",
			Message: fmt.Sprintf("must be between %d and %d, got %d", MinBatchCount, MaxBatchCount, count)}}}
	}
	if err := r.ResolveSeed(); err != nil {
		return nil, err
	}
	batch := int64(max(r.BatchSize, 1))
	if last := r.Seed + int64(count)*batch - 1; last > MaxSeed {
		return nil, &ValidationError{Fields: []*FieldError{{Field: "seed",
			Message: fmt.Sprintf("the last image's seed (seed + batch count × batch size - 1) must not exceed %d, got %d", MaxSeed, last)}}}
	}
	out := make([]Request, count)
	for k := range out {
		out[k] = r
		out[k].Seed = r.Seed + int64(k)*batch
		out[k].LoRAs = append([]LoRA(nil), r.LoRAs...)
		out[k].ControlNets = append([]ControlNet(nil), r.ControlNets...)
	}
	return out, nil
}

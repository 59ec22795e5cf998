// Package request is one generation job as the worker receives it: its
// fields, limits and defaults, the validation that mirrors the form sections,
// and Prepare, the one step that checks the disk.
package request

import (
	"encoding/json"
	"math"
	"strings"

	"atelier/core/spec"
)

// Limits, defaults and names of a request come from the protocol spec
// (docs/protocol/spec.json), which the worker's constants are generated from
// too; the rules between fields are written in validate.go.

// Limits of a request, shared by validation, the UI and the CLI help.
const (
	MinSteps, MaxSteps             = spec.MinSteps, spec.MaxSteps
	MinCFG, MaxCFG                 = spec.MinCFG, spec.MaxCFG
	MinSize, MaxSize               = spec.MinSize, spec.MaxSize
	SizeMultiple                   = spec.SizeMultiple
	MinBatch, MaxBatch             = spec.MinBatch, spec.MaxBatch
	MaxSeed                        = spec.MaxSeed
	MinLoRAWeight, MaxLoRAWeight   = spec.MinLoRAWeight, spec.MaxLoRAWeight
	MaxLoRAs                       = spec.MaxLoRAs
	MaxControlNets                 = spec.MaxControlNets
	MinControlScale                = spec.MinControlScale
	MaxControlScale                = spec.MaxControlScale
	MinCanny, MaxCanny             = spec.MinCanny, spec.MaxCanny
	MinMaskBlur, MaxMaskBlur       = spec.MinMaskBlur, spec.MaxMaskBlur
	MinMaskPadding, MaxMaskPadding = spec.MinMaskPadding, spec.MaxMaskPadding
	MinUpscale, MaxUpscale         = spec.MinUpscale, spec.MaxUpscale
	MinHires, MaxHires             = spec.MinHires, spec.MaxHires
	MinBatchCount, MaxBatchCount   = spec.MinBatchCount, spec.MaxBatchCount
)

// What an absent field means, and what the form offers.
const (
	DefaultControlScale  = spec.DefaultControlScale
	DefaultCannyLow      = spec.DefaultCannyLow
	DefaultCannyHigh     = spec.DefaultCannyHigh
	DefaultRefinerSwitch = spec.DefaultRefinerSwitch // exclusive range 0..1
	DefaultStrength      = spec.DefaultStrength
	DefaultMaskBlur      = spec.DefaultMaskBlur
	DefaultUpscale       = spec.DefaultUpscale
	DefaultHiresScale    = spec.DefaultHiresScale // what the form offers when the pass is turned on
	DefaultHiresStrength = spec.DefaultHiresStrength
)

// Names accepted wherever a path is: the tiny generated demo parts ("tiny" is
// the demo model: noise images, for trying the app) and the built-in upscaler.
const (
	TinyModel       = spec.TinyModel
	TinyLoRA        = spec.TinyLoRA
	TinyControlNet  = spec.TinyControlNet
	TinyRefiner     = spec.TinyRefiner
	TinyVAE         = spec.TinyVAE
	LanczosUpscaler = spec.LanczosUpscaler
	TinyUpscaler    = spec.TinyUpscaler   // a 2x ESRGAN-family model
	TinySingleFile  = spec.TinySingleFile // the tiny model as one .safetensors checkpoint
)

// Schedulers are the samplers the protocol knows, in menu order; the worker's
// hello lists what it really supports. SamplerNames gives A1111's names.
var Schedulers = spec.Schedulers

// SamplerNames maps a scheduler to AUTOMATIC1111's sampler name.
var SamplerNames = spec.SamplerNames

// Schedules are the sigma schedules; "" is the scheduler's own default.
var Schedules = spec.Schedules

// ScheduleNames maps a schedule to A1111's "Schedule type" name.
var ScheduleNames = spec.ScheduleNames

// ControlNetTypes are the control kinds the protocol knows.
var ControlNetTypes = spec.ControlNetTypes

// LoRA is one LoRA applied to the model.
type LoRA struct {
	Path   string  `json:"path"`
	Weight float64 `json:"weight"`
}

// UnmarshalJSON reads a missing weight as 1, as the worker does.
func (l *LoRA) UnmarshalJSON(b []byte) error {
	type plain LoRA
	p := plain{Weight: spec.DefaultLoRAWeight}
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
	return ControlNet{Type: "canny", Model: TinyControlNet, Scale: DefaultControlScale, Start: spec.DefaultControlStart, End: spec.DefaultControlEnd,
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
	return Request{Model: TinyModel, Scheduler: spec.DefaultScheduler, Steps: 30, CFG: 5,
		Width: 1024, Height: 1024, Seed: -1, BatchSize: spec.DefaultBatchSize}
}

// PixelSteps is the denoising work of steps steps of the request, in
// pixel-steps (width × height × batch × steps), the unit of a measured speed.
func (r *Request) PixelSteps(steps int) float64 {
	if r.UpscaleOnly {
		return 0 // nothing is denoised
	}
	return float64(r.Width) * float64(r.Height) * float64(max(r.BatchSize, 1)) * float64(steps)
}

// HiresPixelSteps is the work of the hires pass: the iterations it runs
// (steps × strength) at the enlarged size, for every image of the batch.
func (r *Request) HiresPixelSteps() float64 {
	if r.HiresScale == 0 || r.UpscaleOnly {
		return 0
	}
	w, h := r.HiresSize()
	steps := r.HiresSteps
	if steps == 0 {
		steps = r.Steps
	}
	strength := r.HiresStrength
	if strength == 0 {
		strength = DefaultHiresStrength
	}
	return float64(w) * float64(h) * float64(max(r.BatchSize, 1)) * float64(steps) * strength
}

// ModelName is the name a model goes by in its images' parameters text and in
// listings: the last element of its path ("tiny" for the demo model).
func ModelName(model string) string {
	model = strings.TrimRight(model, "/")
	if i := strings.LastIndexByte(model, '/'); i >= 0 {
		return model[i+1:]
	}
	return model
}

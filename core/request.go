package core

import (
	"errors"
	"fmt"
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
)

// Schedulers known to protocol v1; the worker's hello lists what it really supports.
var Schedulers = []string{"euler", "euler_a", "ddim", "dpmpp_2m"}

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
}

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

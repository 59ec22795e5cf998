// Package protocol is the worker protocol of docs/protocol.md: its messages and
// the strict codec that reads and writes them as JSON lines.
package protocol

import (
	"slices"

	"atelier/core/failure"
	"atelier/core/request"
	"atelier/core/spec"
)

// ProtocolVersion is the worker protocol this build speaks (docs/protocol.md).
const ProtocolVersion = spec.ProtocolVersion

// Message types, both directions.
const (
	MsgGenerate = spec.MsgGenerate
	MsgCancel   = spec.MsgCancel
	MsgPing     = spec.MsgPing
	MsgUnload   = spec.MsgUnload
	MsgShutdown = spec.MsgShutdown

	MsgLoading  = spec.MsgLoading
	MsgHello    = spec.MsgHello
	MsgAccepted = spec.MsgAccepted
	MsgProgress = spec.MsgProgress
	MsgPreview  = spec.MsgPreview
	MsgResult   = spec.MsgResult
	MsgError    = spec.MsgError
	MsgPong     = spec.MsgPong
)

// Device describes one compute device the worker found.
type Device struct {
	Name        string `json:"name"`
	Kind        string `json:"kind"`
	MemoryBytes int64  `json:"memory_bytes"`
}

// Capabilities is what the worker can do, from its hello.
type Capabilities struct {
	Schedulers      []string `json:"schedulers"`
	ControlNetTypes []string `json:"controlnet_types"`
	Features        []string `json:"features"`
	// Schedules lists, for each scheduler, the non-empty schedules it takes.
	Schedules map[string][]string `json:"schedules,omitempty"`
}

// Has reports whether the worker lists feature (c may be nil).
func (c *Capabilities) Has(feature string) bool {
	return c != nil && slices.Contains(c.Features, feature)
}

// ImageResult is one written image.
type ImageResult struct {
	Path   string `json:"path"`
	Seed   int64  `json:"seed"`
	Width  int    `json:"width"`
	Height int    `json:"height"`
}

// Metrics are the worker's measurements of one job.
type Metrics struct {
	TotalS       float64 `json:"total_s"`
	LoadS        float64 `json:"load_s"`
	DenoiseS     float64 `json:"denoise_s"`
	ItS          float64 `json:"its"`
	Device       string  `json:"device"`
	Dtype        string  `json:"dtype"`
	PeakMemBytes int64   `json:"peak_mem_bytes"`
	// VAEFallback: the VAE produced NaNs at the model's precision and was
	// rerun in float32.
	VAEFallback bool `json:"vae_fallback,omitempty"`
	// BatchChunks is how many chunks the batch was denoised in (0 or 1: all at once).
	BatchChunks int `json:"batch_chunks,omitempty"`
}

// Message is one protocol line. Only the fields of its Type are set.
type Message struct {
	Type string `json:"type"`
	ID   string `json:"id,omitempty"`

	// generate
	Request *request.Request `json:"request,omitempty"`

	// loading
	Message string `json:"message,omitempty"`

	// hello
	Protocol      int               `json:"protocol,omitempty"`
	WorkerVersion string            `json:"worker_version,omitempty"`
	Device        string            `json:"device,omitempty"`
	Dtype         string            `json:"dtype,omitempty"`
	Devices       []Device          `json:"devices,omitempty"`
	Capabilities  *Capabilities     `json:"capabilities,omitempty"`
	Versions      map[string]string `json:"versions,omitempty"`

	// progress / preview
	Stage    string  `json:"stage,omitempty"`
	Step     int     `json:"step,omitempty"`
	Total    int     `json:"total,omitempty"`
	ElapsedS float64 `json:"elapsed_s,omitempty"`
	Path     string  `json:"path,omitempty"`

	// result
	Images  []ImageResult `json:"images,omitempty"`
	Metrics *Metrics      `json:"metrics,omitempty"`
	// ControlImages are the preprocessed ControlNet images (canny edges, depth …).
	ControlImages []string `json:"control_images,omitempty"`

	// error
	Code   failure.ErrorCode `json:"code,omitempty"`
	Detail string            `json:"detail,omitempty"`
	Field  string            `json:"field,omitempty"`
}

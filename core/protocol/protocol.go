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

	MsgLoading   = spec.MsgLoading
	MsgHello     = spec.MsgHello
	MsgAccepted  = spec.MsgAccepted
	MsgProgress  = spec.MsgProgress
	MsgPreview   = spec.MsgPreview
	MsgResult    = spec.MsgResult
	MsgError     = spec.MsgError
	MsgPong      = spec.MsgPong
	MsgHeartbeat = spec.MsgHeartbeat
)

// FeatureHeartbeat in hello's features says the worker sends Heartbeat while a job
// runs; only then does the bridge apply its silence deadline.
const FeatureHeartbeat = "heartbeat"

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
	// Schedules lists, for each scheduler, the non-empty schedules it takes. Not
	// omitempty: an empty object (no scheduler takes a schedule) and an absent one
	// (an older worker: all allowed) mean different things and must survive a round trip.
	Schedules map[string][]string `json:"schedules"`
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
	// Versions holds the torch and diffusers versions the job ran with, and Speed
	// the speed settings in effect (compile, vae_dtype, sdpa, …: name → value), so
	// that a reproduction can say what differs. Older workers and jobs have neither.
	Versions map[string]string `json:"versions,omitempty"`
	Speed    map[string]string `json:"speed,omitempty"`
}

// Message is one protocol line: a value of one of the message types below,
// told apart by a type switch. Type is the wire name of its "type" field.
type Message interface {
	Type() string
	isMessage()
}

// Generate asks the worker to run a job. Request has been through
// request.ValidateWire: its seed is resolved and its output folder absolute.
type Generate struct {
	ID      string
	Request *request.Request
}

// Cancel asks the worker to stop a job at its next step.
type Cancel struct{ ID string }

// Ping asks for a Pong with the same id.
type Ping struct{ ID string }

// Unload asks the worker to free its models.
type Unload struct{}

// Shutdown asks the worker to exit.
type Shutdown struct{}

// Loading says what a starting worker is doing, before its Hello.
type Loading struct{ Message string }

// Hello is the worker's first word: its protocol, device and capabilities.
type Hello struct {
	Protocol      int
	WorkerVersion string
	Device        string
	Dtype         string
	Devices       []Device
	Capabilities  *Capabilities
	Versions      map[string]string
	// Host and PID say where the engine runs: the worker's own host name and
	// process id, or, behind the Ray proxy, its actor's node and pid (an
	// addition: empty and 0 from older workers).
	Host string
	PID  int
}

// Accepted says the worker took a job.
type Accepted struct{ ID string }

// Progress says how far a job is: at Step of Total in Stage.
type Progress struct {
	ID       string
	Stage    string
	Step     int
	Total    int
	ElapsedS float64
	// Note, on the optimizing stage only, says why the job's size gets no fast
	// path (no room on the GPU for its build, a build out of memory); empty
	// while it is built. An addition: absent from older workers.
	Note string
}

// Preview is a preview image of a job at Step.
type Preview struct {
	ID   string
	Step int
	Path string
}

// Result ends a job that made its images.
type Result struct {
	ID      string
	Images  []ImageResult
	Metrics *Metrics
	// ControlImages are the preprocessed ControlNet images (canny edges, depth …).
	ControlImages []string
}

// Error ends a job that failed, or reports a line the worker could not read
// (then ID is empty).
type Error struct {
	ID      string
	Code    failure.ErrorCode
	Message string
	Detail  string
	Field   string
}

// Pong answers a Ping.
type Pong struct{ ID string }

// Heartbeat says the worker is alive while it works on job ID; it comes every
// spec.HeartbeatIntervalS seconds from a thread of its own, however long a step takes.
type Heartbeat struct{ ID string }

func (Generate) Type() string  { return MsgGenerate }
func (Cancel) Type() string    { return MsgCancel }
func (Ping) Type() string      { return MsgPing }
func (Unload) Type() string    { return MsgUnload }
func (Shutdown) Type() string  { return MsgShutdown }
func (Loading) Type() string   { return MsgLoading }
func (Hello) Type() string     { return MsgHello }
func (Accepted) Type() string  { return MsgAccepted }
func (Progress) Type() string  { return MsgProgress }
func (Preview) Type() string   { return MsgPreview }
func (Result) Type() string    { return MsgResult }
func (Error) Type() string     { return MsgError }
func (Pong) Type() string      { return MsgPong }
func (Heartbeat) Type() string { return MsgHeartbeat }

func (Generate) isMessage()  {}
func (Cancel) isMessage()    {}
func (Ping) isMessage()      {}
func (Unload) isMessage()    {}
func (Shutdown) isMessage()  {}
func (Loading) isMessage()   {}
func (Hello) isMessage()     {}
func (Accepted) isMessage()  {}
func (Progress) isMessage()  {}
func (Preview) isMessage()   {}
func (Result) isMessage()    {}
func (Error) isMessage()     {}
func (Pong) isMessage()      {}
func (Heartbeat) isMessage() {}

// IDOf is the job or ping id a message carries, or "" for the messages
// without one (unload, shutdown, loading, hello, and an error about an
// unreadable line).
func IDOf(m Message) string {
	switch m := m.(type) {
	case Generate:
		return m.ID
	case Cancel:
		return m.ID
	case Ping:
		return m.ID
	case Accepted:
		return m.ID
	case Progress:
		return m.ID
	case Preview:
		return m.ID
	case Result:
		return m.ID
	case Error:
		return m.ID
	case Pong:
		return m.ID
	case Heartbeat:
		return m.ID
	}
	return ""
}

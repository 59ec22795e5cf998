package jobs

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
)

// SlowCPUStep is the length of a denoising step from which a size earns a
// warning on the CPU: at a minute a step, a job of 30 steps takes half an hour.
const SlowCPUStep = time.Minute

// CPUPixelsPerCoreS is the rule for the CPU when the history has no measured
// speed of the model there: an SDXL model (a UNet of 2.6 billion parameters,
// float32, CFG on) denoises about 3,000 pixels of the picture a second per
// CPU core. A 1024 × 1024 step is then about 45 s on 8 cores and 90 s on 4,
// as SDXL runs on desktop CPUs with plain PyTorch.
const CPUPixelsPerCoreS = 3000

// rateSamples is how many of the model's recent CPU jobs the estimate uses.
const rateSamples = 10

// StepEstimate is how long one denoising step of a request takes on the CPU.
type StepEstimate struct {
	Step  time.Duration // a step of the largest pass (the batch, or one image of the hires pass)
	Total time.Duration // every denoising step of the job
	// Width × Height (× Batch) is the size of that pass.
	Width, Height, Batch int
	// Samples is the number of measured jobs behind the estimate; 0 means
	// the rule for an SDXL model over Cores cores.
	Samples int
	Cores   int
}

// EstimateCPUStep estimates a step of req on the CPU: from rate, the measured
// speed of req's model on the CPU, when known; else from CPUPixelsPerCoreS
// over cores. The rule is for a full-size SDXL model, so the tiny demo model
// (and an enlargement alone, which denoises nothing) gets no estimate
// without a measurement: ok is false.
func EstimateCPUStep(req request.Request, rate store.Rate, cores int) (StepEstimate, bool) {
	if req.UpscaleOnly || req.Width <= 0 || req.Height <= 0 || req.Steps <= 0 {
		return StepEstimate{}, false
	}
	pxPerS, samples := rate.PixelStepsPerS, rate.Samples
	if !rate.Known() {
		if tiny := request.ModelName(req.Model); tiny == request.TinyModel || tiny == request.TinySingleFile || cores <= 0 {
			return StepEstimate{}, false
		}
		pxPerS, samples = float64(cores)*CPUPixelsPerCoreS, 0
	}
	e := StepEstimate{Width: req.Width, Height: req.Height, Batch: max(req.BatchSize, 1), Samples: samples, Cores: cores}
	step := req.PixelSteps(1)
	if req.HiresScale > 0 {
		// The hires pass draws one enlarged image at a time.
		w, h := req.HiresSize()
		if hires := float64(w) * float64(h); hires > step {
			step, e.Width, e.Height, e.Batch = hires, w, h, 1
		}
	}
	e.Step = seconds(step / pxPerS)
	e.Total = seconds((req.PixelSteps(req.Steps) + req.HiresPixelSteps()) / pxPerS)
	return e, true
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// Text is the warning for a step this slow: what takes how long, and what to do.
func (e StepEstimate) Text() string {
	size := fmt.Sprintf("%d × %d", e.Width, e.Height)
	if e.Batch > 1 {
		size += fmt.Sprintf(" (a batch of %d)", e.Batch)
	}
	basis := fmt.Sprintf("estimated for an SDXL model on %d CPU cores", e.Cores)
	switch {
	case e.Samples == 1:
		basis = "measured in an earlier job of this model on the CPU"
	case e.Samples > 1:
		basis = fmt.Sprintf("measured in %d earlier jobs of this model on the CPU", e.Samples)
	}
	// The advice comes before the basis: the studio's note shows the start first.
	return fmt.Sprintf("%s on the CPU takes about %s a step, %s for the whole job; use a GPU or a smaller size (%s)",
		size, roughly(e.Step), roughly(e.Total), basis)
}

// roughly says a duration of a minute or more as people round it.
func roughly(d time.Duration) string {
	switch m := d.Minutes(); {
	case m < 1.5:
		if d < 45*time.Second {
			return fmt.Sprintf("%d seconds", int(d.Round(time.Second).Seconds()))
		}
		return "a minute"
	case m < 90:
		return fmt.Sprintf("%d minutes", int(m+0.5))
	default:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", d.Hours()), ".0") + " hours"
	}
}

// SlowCPUWarning is the warning due before req runs (without "warning:"), or
// "" when none is: the worker is expected on the CPU and a step of req takes
// SlowCPUStep or more there. A request that cannot run gets none (its error
// says more); the check reads no file but the model's header, so a form may
// call it on every edit.
func (r *Runner) SlowCPUWarning(ctx context.Context, req request.Request) string {
	if req.Validate() != nil {
		return ""
	}
	model, err := request.CheckModel(req.Model) // as the history stores it: "tiny" or an absolute path
	if err != nil {
		return ""
	}
	req.Model = model
	if r.ExpectedDevice(ctx) != "cpu" {
		return ""
	}
	rate, err := r.store.MeasuredRateOf(ctx, store.RateFilter{Device: "cpu", Model: req.Model}, rateSamples)
	if err != nil {
		rate = store.Rate{} // the rule still holds
	}
	e, ok := EstimateCPUStep(req, rate, runtime.NumCPU())
	if !ok || e.Step < SlowCPUStep {
		return ""
	}
	return e.Text()
}

// ExpectedDevice is the device kind ("cuda", "mps", "cpu") the next job most
// likely runs on, or "" when nothing tells: the running worker's hello, else
// ATELIER_DEVICE, else the device of the last done job, else "cpu" on a
// Linux machine without a GPU's device files.
func (r *Runner) ExpectedDevice(ctx context.Context) string {
	if h, ok := r.gen.(interface{ Hello() (protocol.Hello, bool) }); ok {
		if hello, ok := h.Hello(); ok && hello.Device != "" {
			return hello.Device
		}
	}
	if d := strings.TrimSpace(os.Getenv(DeviceEnv)); d != "" {
		kind, _, _ := strings.Cut(strings.ToLower(d), ":")
		return kind
	}
	if d, err := r.store.LastDevice(ctx); err == nil && d != "" {
		return d
	}
	if runtime.GOOS == "linux" && !anyExists(gpuDeviceFiles) {
		return "cpu"
	}
	return ""
}

// DeviceEnv overrides the worker's choice of device (docs/protocol.md).
const DeviceEnv = "ATELIER_DEVICE"

// gpuDeviceFiles are those of NVIDIA's driver (CUDA) and of AMD's (ROCm,
// which torch also calls cuda): without them torch finds no GPU.
var gpuDeviceFiles = []string{"/dev/nvidiactl", "/dev/kfd"}

func anyExists(paths []string) bool {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

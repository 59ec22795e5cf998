package settings

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// Environment variables the worker reads (docs/protocol.md, "Worker settings").
const (
	EnvDevice = "ATELIER_DEVICE"
	EnvPython = "ATELIER_PYTHON"
)

// SpeedVars are the worker's speed and memory variables, every one that a speed
// mode decides (python/atelier_worker/accel.py, engine/model_cache.py,
// engine/denoise.py). Others (ATELIER_DTYPE, ATELIER_PNG_COMPRESS, the cache and
// log variables) are no part of a mode and come from the environment alone.
var SpeedVars = []string{
	"ATELIER_COMPILE", "ATELIER_COMPILE_MODE", "ATELIER_COMPILE_VAE", "ATELIER_COMPILE_TEXT",
	"ATELIER_FUSE_QKV", "ATELIER_CHANNELS_LAST", "ATELIER_VAE_DTYPE", "ATELIER_SDPA",
	"ATELIER_INFERENCE_MODE", "ATELIER_CUDNN_BENCHMARK", "ATELIER_FP8", "ATELIER_OFFLOAD",
	"ATELIER_VAE_TILING", "ATELIER_VAE_SLICING", "ATELIER_WARM_MODELS", "ATELIER_WARM_MODELS_GB",
	"ATELIER_BATCH_GB_PER_MEGAPIXEL", "ATELIER_FAST_MAX_AUTOTUNE", "ATELIER_FAST_CUDA_GRAPH",
}

// speedModes gives, for each mode, the value of every variable of SpeedVars; ""
// leaves it unset, so the worker's own default applies (which depends on the
// device: compile and fused QKV only on CUDA, cuDNN autotuning only on CUDA off
// the fast path). Balanced is exactly the worker's defaults. docs/features.md
// ("Settings") has the table and the measurements behind it.
var speedModes = map[Speed]map[string]string{
	// fast: bench's `fast` variant (full-graph compile with CUDA graphs, compiled
	// VAE and text encoders): 1.12 s against 1.47 s a 1024² image on an H100, but
	// the first image after a start compiles for minutes. FP8 stays off: it costs
	// precision and needs Hopper.
	SpeedFast: {
		"ATELIER_COMPILE": "full", "ATELIER_COMPILE_MODE": "reduce-overhead",
		"ATELIER_COMPILE_VAE": "1", "ATELIER_COMPILE_TEXT": "1",
		"ATELIER_FUSE_QKV": "1", "ATELIER_CHANNELS_LAST": "0", "ATELIER_VAE_DTYPE": "auto",
		"ATELIER_SDPA": "auto", "ATELIER_INFERENCE_MODE": "1", "ATELIER_CUDNN_BENCHMARK": "1",
		"ATELIER_FP8": "0", "ATELIER_OFFLOAD": "none", "ATELIER_VAE_TILING": "0",
		"ATELIER_VAE_SLICING": "0", "ATELIER_WARM_MODELS": "", "ATELIER_WARM_MODELS_GB": "",
		"ATELIER_BATCH_GB_PER_MEGAPIXEL": "", "ATELIER_FAST_MAX_AUTOTUNE": "", "ATELIER_FAST_CUDA_GRAPH": "",
	},
	SpeedBalanced: {},
	// low VRAM: each model moves to the GPU only while it runs (6.6 against
	// 10.2 GiB peak at 1024² on an H100, about 3× slower), large images decode
	// in tiles and batches one image at a time, one model stays warm, and
	// nothing compiles (compile does not mix with offload) or autotunes
	// convolutions (its trials take workspace memory).
	SpeedLowVRAM: {
		"ATELIER_COMPILE": "off", "ATELIER_COMPILE_MODE": "", "ATELIER_COMPILE_VAE": "0",
		"ATELIER_COMPILE_TEXT": "0", "ATELIER_FUSE_QKV": "", "ATELIER_CHANNELS_LAST": "0",
		"ATELIER_VAE_DTYPE": "auto", "ATELIER_SDPA": "auto", "ATELIER_INFERENCE_MODE": "1",
		"ATELIER_CUDNN_BENCHMARK": "0", "ATELIER_FP8": "0", "ATELIER_OFFLOAD": "model",
		"ATELIER_VAE_TILING": "1", "ATELIER_VAE_SLICING": "1", "ATELIER_WARM_MODELS": "1",
		"ATELIER_WARM_MODELS_GB": "", "ATELIER_BATCH_GB_PER_MEGAPIXEL": "",
		"ATELIER_FAST_MAX_AUTOTUNE": "", "ATELIER_FAST_CUDA_GRAPH": "",
	},
}

// SpeedEnv is what mode sets: VAR=VALUE for each variable it does not leave to
// the worker, sorted.
func SpeedEnv(mode Speed) []string {
	var out []string
	for k, v := range speedModes[mode] {
		if v != "" {
			out = append(out, k+"="+v)
		}
	}
	sort.Strings(out)
	return out
}

// Source says where a value in effect came from.
type Source string

// The sources, strongest first.
const (
	FromEnv     Source = "environment"
	FromFlag    Source = "flag"
	FromStored  Source = "settings"
	FromDefault Source = "default"
)

// Flags are what a command's flags ask for; "" means not given.
type Flags struct {
	Device string
	Speed  Speed
}

// Worker is what the worker starts with: the values in effect, where each came
// from, and the variables to add to its environment.
type Worker struct {
	Device     string // "" auto
	DeviceFrom Source
	Speed      Speed
	SpeedFrom  Source
	// Python runs the worker when not empty; empty leaves the app's own
	// choice ($ATELIER_PYTHON, then the managed venv or the build's).
	Python     string
	PythonFrom Source
	// Env holds VAR=VALUE for the device and the mode's variables, minus any
	// variable the process's environment sets: the environment always wins.
	Env []string
}

// Resolve applies the order environment > flag > stored > default to the
// device, the speed mode and the Python. lookup is os.LookupEnv in the app.
// Speed variables are resolved one by one: one set in the environment keeps
// its value and the mode sets the others.
func Resolve(stored Settings, flags Flags, lookup func(string) (string, bool)) Worker {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	set := func(k string) (string, bool) {
		v, ok := lookup(k)
		return v, ok && v != ""
	}
	w := Worker{DeviceFrom: FromDefault, SpeedFrom: FromDefault, PythonFrom: FromDefault, Speed: SpeedBalanced}
	switch v, ok := set(EnvDevice); {
	case ok:
		w.Device, w.DeviceFrom = v, FromEnv
	case flags.Device != "":
		w.Device, w.DeviceFrom = flags.Device, FromFlag
	case stored.Device != "":
		w.Device, w.DeviceFrom = stored.Device, FromStored
	}
	if w.Device == DeviceAuto {
		w.Device = "" // the worker's own choice, even over a stored device
	}
	if w.Device != "" && (w.DeviceFrom == FromFlag || w.DeviceFrom == FromStored) {
		w.Env = append(w.Env, EnvDevice+"="+w.Device)
	}
	switch {
	case flags.Speed != "":
		w.Speed, w.SpeedFrom = flags.Speed, FromFlag
	case stored.Speed != "":
		w.Speed, w.SpeedFrom = stored.Speed, FromStored
	}
	for _, kv := range SpeedEnv(w.Speed) {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := set(k); ok {
			continue
		}
		w.Env = append(w.Env, kv)
	}
	switch _, ok := set(EnvPython); {
	case ok:
		w.PythonFrom = FromEnv // the bridge reads it itself
	case stored.Python != "":
		w.Python, w.PythonFrom = stored.Python, FromStored
	}
	return w
}

// Describe says what is in effect and why, for `atelier doctor` and logs.
func (w Worker) Describe() string {
	dev := w.Device
	if dev == "" {
		dev = "auto"
	}
	return fmt.Sprintf("device %s (%s), speed %s (%s)", dev, w.DeviceFrom, w.Speed, w.SpeedFrom)
}

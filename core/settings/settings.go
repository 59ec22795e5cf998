// Package settings holds the user's preferences that the studio's Settings window
// edits and the CLI honours: the worker's device, its speed mode, its Python, the
// output folder and a Ray address. They live in the history's settings table, as
// one JSON value, so that the app and `atelier` read the same ones.
package settings

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"atelier/core/protocol"
)

// Key is the settings-table key holding the preferences.
const Key = "app.settings"

// DeviceAuto, given as a flag, asks for the best device the worker finds over
// a stored one; stored, it is the same as none.
const DeviceAuto = "auto"

// Speed is a speed mode: a named set of the worker's speed and memory settings.
type Speed string

// The speed modes. Balanced is the worker's own defaults.
const (
	SpeedFast     Speed = "fast"
	SpeedBalanced Speed = "balanced"
	SpeedLowVRAM  Speed = "low-vram"
)

// Speeds lists the modes in the order the window offers them.
var Speeds = []Speed{SpeedFast, SpeedBalanced, SpeedLowVRAM}

// Label is how the window names a mode.
func (s Speed) Label() string {
	switch s {
	case SpeedFast:
		return "Fast"
	case SpeedLowVRAM:
		return "Low VRAM"
	default:
		return "Balanced"
	}
}

// Settings are the stored preferences. The zero value is the defaults: the best
// device the worker finds, balanced speed, the app's own Python and folders.
// The model folders are the library's own setting (library.folders).
type Settings struct {
	// Device is "" (auto), cpu, mps, cuda or cuda:N.
	Device string `json:"device,omitempty"`
	// Speed is "" (balanced) or one of Speeds.
	Speed Speed `json:"speed,omitempty"`
	// Python runs the worker; "" is the app's own (its managed venv, or the
	// one `make run` built).
	Python string `json:"python,omitempty"`
	// OutputFolder receives the generated images (one folder per day); "" is
	// the data folder's images.
	OutputFolder string `json:"output_folder,omitempty"`
	// RayAddress is the Ray cluster `atelier queue run --ray` uses when no
	// address is given.
	RayAddress string `json:"ray_address,omitempty"`
}

// SpeedOrDefault is the mode in effect: Balanced when none is set.
func (s Settings) SpeedOrDefault() Speed {
	if s.Speed == "" {
		return SpeedBalanced
	}
	return s.Speed
}

// Store is the part of the history the settings live in; store.Store has it.
type Store interface {
	GetSetting(ctx context.Context, key string) (string, bool, error)
	SetSetting(ctx context.Context, key, value string) error
}

// Load reads the stored settings; none stored gives the defaults. A damaged
// value is an error that says so, with the defaults.
func Load(ctx context.Context, st Store) (Settings, error) {
	v, ok, err := st.GetSetting(ctx, Key)
	if err != nil || !ok {
		return Settings{}, err
	}
	var s Settings
	if err := json.Unmarshal([]byte(v), &s); err != nil {
		return Settings{}, fmt.Errorf("the stored settings cannot be read (%v): the defaults are used; save the Settings window again to replace them", err)
	}
	return s, nil
}

// Save checks s (without a worker's device list) and stores it in one write.
func Save(ctx context.Context, st Store, s Settings) error {
	if err := s.Check(nil); err != nil {
		return err
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return st.SetSetting(ctx, Key, string(b))
}

// Error is a setting that cannot be used: which one, and what to do.
type Error struct {
	Field   string // device, speed, python, output_folder, ray_address
	Message string
}

func (e *Error) Error() string { return e.Field + ": " + e.Message }

// Check validates s. devices, when not nil, are those the worker reported in
// its hello: a device it does not have is refused. The Python is checked
// by CheckPython, which runs it.
func (s Settings) Check(devices []protocol.Device) error {
	if err := CheckDevice(s.Device, devices); err != nil {
		return err
	}
	if err := CheckSpeed(string(s.Speed)); err != nil {
		return err
	}
	if s.OutputFolder != "" {
		if err := CheckFolder(s.OutputFolder); err != nil {
			return &Error{Field: "output_folder", Message: err.Error()}
		}
	}
	if s.Python != "" && !filepath.IsAbs(s.Python) {
		return &Error{Field: "python", Message: fmt.Sprintf("%q is not an absolute path: give the full path of the python, e.g. /usr/bin/python3.11", s.Python)}
	}
	if a := strings.TrimSpace(s.RayAddress); a != s.RayAddress || strings.ContainsAny(a, " \t\n") {
		return &Error{Field: "ray_address", Message: fmt.Sprintf("%q has spaces: give host:port, ray://host:port or auto", s.RayAddress)}
	}
	return nil
}

// CheckSpeed accepts "" (balanced) and the modes.
func CheckSpeed(v string) error {
	if v == "" {
		return nil
	}
	for _, m := range Speeds {
		if Speed(v) == m {
			return nil
		}
	}
	return &Error{Field: "speed", Message: fmt.Sprintf("%q is not a speed mode: use fast, balanced or low-vram", v)}
}

// CUDAIndex is the number cuda:N gives the visible-th CUDA GPU of a worker's
// hello: the GPU's index as nvidia-smi numbers it, the one number users see
// everywhere (generate, queue add and run, Settings). When CUDA_VISIBLE_DEVICES
// lists GPUs by index, the worker sees only those, in that order; listed by
// UUID, a GPU is its place in the list, as the queue's slots name it. The
// worker maps the number back (python/atelier_worker/device.py, cuda_index).
func CUDAIndex(visible int) string {
	if v, ok := os.LookupEnv("CUDA_VISIBLE_DEVICES"); ok {
		var ids []string
		for _, f := range strings.Split(v, ",") {
			f = strings.TrimSpace(f)
			if f == "" || strings.HasPrefix(f, "-") {
				break // CUDA ignores the entries from an invalid one on
			}
			ids = append(ids, f)
		}
		if visible < len(ids) {
			if _, err := strconv.Atoi(ids[visible]); err == nil {
				return ids[visible]
			}
		}
	}
	return strconv.Itoa(visible)
}

// cudaNames are the cuda:N names of the CUDA GPUs of a hello, in its order.
func cudaNames(devices []protocol.Device) []string {
	var out []string
	for _, d := range devices {
		if d.Kind == "cuda" {
			out = append(out, "cuda:"+CUDAIndex(len(out)))
		}
	}
	return out
}

// CheckDevice accepts "" (auto), cpu, mps, cuda and cuda:N. With devices (the
// worker's hello), the device must be among them: cuda:N must be one of the
// GPUs it found, by nvidia-smi's index (CUDAIndex).
func CheckDevice(v string, devices []protocol.Device) error {
	if v == "" || v == "cpu" || v == DeviceAuto {
		return nil
	}
	kind, index, hasIndex := strings.Cut(v, ":")
	n := -1
	switch {
	case kind == "mps" && !hasIndex:
	case kind == "cuda" && !hasIndex:
	case kind == "cuda":
		i, err := strconv.Atoi(index)
		if err != nil || i < 0 || strconv.Itoa(i) != index {
			return &Error{Field: "device", Message: fmt.Sprintf("%q is not a device: use auto, cpu, mps, cuda or cuda:N (N a number from 0)", v)}
		}
		n = i
	default:
		return &Error{Field: "device", Message: fmt.Sprintf("%q is not a device: use auto, cpu, mps, cuda or cuda:N", v)}
	}
	if devices == nil {
		return nil
	}
	count := 0
	for _, d := range devices {
		if d.Kind == kind {
			count++
		}
	}
	switch names := cudaNames(devices); {
	case count == 0:
		return &Error{Field: "device", Message: fmt.Sprintf("the worker has no %s device (it found %s): choose one it has, or auto", kind, DeviceList(devices))}
	case n >= 0 && !slices.Contains(names, v):
		return &Error{Field: "device", Message: fmt.Sprintf("the worker has no %s: it found %d CUDA GPU(s), %s (numbered as nvidia-smi numbers them)", v, count, strings.Join(names, ", "))}
	}
	return nil
}

// DeviceChoices are the device values a worker with these devices offers:
// auto, cuda:N for each CUDA GPU, mps, cpu.
func DeviceChoices(devices []protocol.Device) []string {
	out := append([]string{""}, cudaNames(devices)...)
	for _, d := range devices {
		if d.Kind == "mps" {
			out = append(out, "mps")
			break
		}
	}
	return append(out, "cpu")
}

// DeviceList names devices for a message: "cuda (NVIDIA H100), cpu".
func DeviceList(devices []protocol.Device) string {
	var parts []string
	for _, d := range devices {
		parts = append(parts, fmt.Sprintf("%s (%s)", d.Kind, d.Name))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// CheckFolder says whether dir is an existing folder Atelier can write to.
func CheckFolder(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("%q is not an absolute path: choose the folder with the button", dir)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("the folder %s does not exist: create it first, or choose another", dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is a file, not a folder: choose a folder", dir)
	}
	f, err := os.CreateTemp(dir, ".atelier-write-check-*")
	if err != nil {
		return fmt.Errorf("the folder %s cannot be written (%v): choose another, or change its permissions", dir, err)
	}
	name := f.Name()
	f.Close()
	os.Remove(name)
	return nil
}

// Package library finds and classifies the models on disk (checkpoints,
// refiners, LoRAs, ControlNets, VAEs, upscalers) in the folders the user chose.
package library

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"atelier/core/request"
	"atelier/core/safetensors"
)

// ModelKind is what a file or folder of the model library is.
type ModelKind string

// The kinds the library sorts models into.
const (
	KindCheckpoint ModelKind = "checkpoint"
	KindRefiner    ModelKind = "refiner"
	KindLoRA       ModelKind = "lora"
	KindControlNet ModelKind = "controlnet"
	KindVAE        ModelKind = "vae"
	KindUpscaler   ModelKind = "upscaler"
	KindUnknown    ModelKind = "unknown"
)

// ModelKinds lists the kinds in the order the library shows them.
var ModelKinds = []ModelKind{KindCheckpoint, KindRefiner, KindLoRA, KindControlNet, KindVAE, KindUpscaler, KindUnknown}

// LibraryEntry is one model the library found.
type LibraryEntry struct {
	Path   string    `json:"path"`
	Name   string    `json:"name"`
	Kind   ModelKind `json:"kind"`
	Format string    `json:"format"` // "diffusers", "safetensors" or "pickle"
	// Refused says why Atelier will not load it (a pickle file, an SD 1.5
	// checkpoint …); empty for a usable model.
	Refused string `json:"refused,omitempty"`
	// Detail is how it was recognised, e.g. "_class_name ControlNetModel".
	Detail string `json:"detail,omitempty"`
}

// Library is the result of scanning the model folders.
type Library struct {
	Folders []string       `json:"folders"`
	Entries []LibraryEntry `json:"entries"`
	// Problems are folders or files that could not be read.
	Problems []string `json:"problems,omitempty"`
}

// Of returns the usable entries of one kind, in path order.
func (l *Library) Of(kind ModelKind) []LibraryEntry {
	if l == nil {
		return nil
	}
	var out []LibraryEntry
	for _, e := range l.Entries {
		if e.Kind == kind && e.Refused == "" {
			out = append(out, e)
		}
	}
	return out
}

// Paths returns the paths of the usable entries of one kind.
func (l *Library) Paths(kind ModelKind) []string {
	var out []string
	for _, e := range l.Of(kind) {
		out = append(out, e.Path)
	}
	return out
}

// LibraryFoldersSetting is the settings key holding the model folders (a JSON list).
const LibraryFoldersSetting = "library.folders"

// SettingsStore is the part of the store the library's folder list lives in.
type SettingsStore interface {
	GetSetting(ctx context.Context, key string) (string, bool, error)
	SetSetting(ctx context.Context, key, value string) error
}

// LibraryFolders returns the model folders the user added, in order.
func LibraryFolders(ctx context.Context, s SettingsStore) ([]string, error) {
	v, ok, err := s.GetSetting(ctx, LibraryFoldersSetting)
	if err != nil || !ok {
		return nil, err
	}
	var folders []string
	if err := json.Unmarshal([]byte(v), &folders); err != nil {
		return nil, fmt.Errorf("the model folder setting is damaged (%v): add the folders again", err)
	}
	return folders, nil
}

// ScanFolders are the folders the library scans: Atelier's own models folder
// (own; empty in tests without one) first, always, since downloads go there,
// then the folders the user added, without repeating own.
func ScanFolders(own string, added []string) []string {
	var out []string
	if own != "" {
		out = append(out, filepath.Clean(own))
	}
	for _, f := range added {
		if !slices.Contains(out, filepath.Clean(f)) {
			out = append(out, f)
		}
	}
	return out
}

// AddLibraryFolder adds an existing folder (made absolute) to the list; adding
// it twice keeps one. It returns the folder as stored.
func AddLibraryFolder(ctx context.Context, s SettingsStore, dir string) (string, error) {
	abs, err := request.ResolveFile(dir)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("model folder %s: %w", abs, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("%s is a file: give the folder that holds your models", abs)
	}
	folders, err := LibraryFolders(ctx, s)
	if err != nil {
		return "", err
	}
	if !slices.Contains(folders, abs) {
		folders = append(folders, abs)
	}
	b, _ := json.Marshal(folders)
	return abs, s.SetSetting(ctx, LibraryFoldersSetting, string(b))
}

// RemoveLibraryFolder takes a folder off the list; it reports whether it was there.
func RemoveLibraryFolder(ctx context.Context, s SettingsStore, dir string) (bool, error) {
	folders, err := LibraryFolders(ctx, s)
	if err != nil {
		return false, err
	}
	abs, _ := request.ResolveFile(dir)
	var kept []string
	for _, f := range folders {
		if f != abs && f != dir {
			kept = append(kept, f)
		}
	}
	if len(kept) == len(folders) {
		return false, nil
	}
	b, _ := json.Marshal(orEmpty(kept))
	return true, s.SetSetting(ctx, LibraryFoldersSetting, string(b))
}

// otherAppFolders are where other SDXL apps keep their models, under the home
// folder: someone coming from one of them finds their models at once.
var otherAppFolders = []string{
	"stable-diffusion-webui/models",       // AUTOMATIC1111
	"stable-diffusion-webui-forge/models", // Forge
	"ComfyUI/models",
	"invokeai/models",
	"Fooocus/models",
}

// FindModelFolders returns the model folders of other apps (AUTOMATIC1111,
// Forge, ComfyUI, InvokeAI, Fooocus) and the Hugging Face hub cache that
// exist on this machine, in that order.
func FindModelFolders(home string) []string {
	var cands []string
	for _, rel := range otherAppFolders {
		cands = append(cands, filepath.Join(home, rel))
	}
	switch {
	case os.Getenv("HF_HUB_CACHE") != "":
		cands = append(cands, os.Getenv("HF_HUB_CACHE"))
	case os.Getenv("HF_HOME") != "":
		cands = append(cands, filepath.Join(os.Getenv("HF_HOME"), "hub"))
	default:
		cands = append(cands, filepath.Join(home, ".cache", "huggingface", "hub"))
	}
	var out []string
	for _, c := range cands {
		if fi, err := os.Stat(c); err == nil && fi.IsDir() {
			out = append(out, c)
		}
	}
	return out
}

// DiscoverLibraryFolders sets up the library on first use: when no folder list
// was ever saved, the folders FindModelFolders finds become the list, and are
// returned. Once a list exists (even an empty one, after the user removed
// folders) it is left as the user made it.
func DiscoverLibraryFolders(ctx context.Context, s SettingsStore, home string) ([]string, error) {
	if _, ok, err := s.GetSetting(ctx, LibraryFoldersSetting); err != nil || ok {
		return nil, err
	}
	found := FindModelFolders(home)
	b, _ := json.Marshal(orEmpty(found))
	return found, s.SetSetting(ctx, LibraryFoldersSetting, string(b))
}

// maxScanDepth bounds how deep below a model folder the scan looks.
const maxScanDepth = 4

// ScanLibrary walks the folders and classifies what it finds. Diffusers
// folders are told apart by the _class_name of their model_index.json or
// config.json; single .safetensors files by the tensor names in their header
// (no tensor is loaded). Pickle files are listed as refused.
func ScanLibrary(folders []string) *Library {
	lib := &Library{Folders: orEmpty(folders)}
	seen := map[string]bool{}
	for _, root := range folders {
		root = filepath.Clean(root)
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				lib.Problems = append(lib.Problems, err.Error())
				if d != nil && d.IsDir() && path != root {
					return fs.SkipDir
				}
				return nil
			}
			if seen[path] {
				return nil
			}
			rel, _ := filepath.Rel(root, path)
			depth := strings.Count(rel, string(filepath.Separator))
			if d.IsDir() {
				if strings.HasPrefix(d.Name(), ".") && path != root {
					return fs.SkipDir
				}
				if e, ok := classifyDir(path); ok {
					seen[path] = true
					lib.Entries = append(lib.Entries, e)
					return fs.SkipDir // a model's own files are not models of their own
				}
				if depth >= maxScanDepth {
					return fs.SkipDir
				}
				return nil
			}
			if e, ok := classifyFile(path); ok {
				seen[path] = true
				lib.Entries = append(lib.Entries, e)
			}
			return nil
		})
		if err != nil {
			lib.Problems = append(lib.Problems, err.Error())
		}
	}
	sort.SliceStable(lib.Entries, func(i, j int) bool { return lib.Entries[i].Path < lib.Entries[j].Path })
	return lib
}

// classifyDir recognises a diffusers folder by its _class_name.
func classifyDir(path string) (LibraryEntry, bool) {
	e := LibraryEntry{Path: path, Name: hubName(path), Format: "diffusers"}
	if cls, err := className(filepath.Join(path, "model_index.json")); err == nil {
		e.Detail = "model_index.json _class_name " + cls
		switch {
		case cls == "StableDiffusionXLImg2ImgPipeline" && !hasDir(path, "text_encoder"):
			// The refiner ships as an img2img pipeline with only the second text encoder.
			e.Kind = KindRefiner
		case strings.HasPrefix(cls, "StableDiffusionXL"):
			e.Kind = KindCheckpoint
		default:
			e.Kind = KindCheckpoint
			e.Refused = fmt.Sprintf("a %s, not an SDXL pipeline", cls)
		}
		return e, true
	} else if !errors.Is(err, fs.ErrNotExist) {
		e.Kind, e.Refused = KindUnknown, "model_index.json cannot be read: "+err.Error()
		return e, true
	}
	cls, err := className(filepath.Join(path, "config.json"))
	if err != nil {
		return LibraryEntry{}, false
	}
	e.Detail = "config.json _class_name " + cls
	switch cls {
	case "ControlNetModel", "ControlNetUnionModel", "ControlNetXSAdapter":
		e.Kind = KindControlNet
	case "AutoencoderKL", "AutoencoderTiny":
		e.Kind = KindVAE
	default:
		return LibraryEntry{}, false // a component folder (unet/, text_encoder/ …) or no model
	}
	return e, true
}

func hasDir(path, name string) bool {
	fi, err := os.Stat(filepath.Join(path, name))
	return err == nil && fi.IsDir()
}

func className(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var v struct {
		ClassName string `json:"_class_name"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return "", err
	}
	if v.ClassName == "" {
		return "", fmt.Errorf("%s has no _class_name", path)
	}
	return v.ClassName, nil
}

// classifyFile classifies a .safetensors file by its header and lists a
// pickle file as refused. Other files are not models.
func classifyFile(path string) (LibraryEntry, bool) {
	name := filepath.Base(path)
	if ext := request.PickleExt(path); ext != "" {
		return LibraryEntry{Path: path, Name: name, Kind: KindUnknown, Format: "pickle",
			Refused: fmt.Sprintf("a pickle file (%s) can run arbitrary code when loaded: convert it to .safetensors", ext)}, true
	}
	if !strings.EqualFold(filepath.Ext(path), ".safetensors") {
		return LibraryEntry{}, false
	}
	e := LibraryEntry{Path: path, Name: strings.TrimSuffix(name, filepath.Ext(name)), Format: "safetensors"}
	keys, err := safetensors.Keys(path)
	if err != nil {
		e.Kind, e.Refused = KindUnknown, err.Error()
		return e, true
	}
	e.Kind, e.Detail = ClassifyTensorNames(keys)
	switch e.Kind {
	case KindUnknown:
		e.Refused = "its tensors match no model kind Atelier knows"
	case KindCheckpoint:
		if strings.Contains(e.Detail, "not SDXL") {
			e.Refused = "an SD 1.x/2.x checkpoint, not SDXL"
		}
	}
	return e, true
}

// ClassifyTensorNames tells a model's kind from its tensor names, and says why.
func ClassifyTensorNames(keys []string) (ModelKind, string) {
	has := func(subs ...string) string {
		for _, k := range keys {
			for _, s := range subs {
				if strings.Contains(k, s) {
					return s
				}
			}
		}
		return ""
	}
	prefixed := func(prefixes ...string) bool {
		for _, k := range keys {
			ok := false
			for _, p := range prefixes {
				if strings.HasPrefix(k, p) {
					ok = true
					break
				}
			}
			if !ok {
				return false
			}
		}
		return len(keys) > 0
	}
	if s := safetensors.LoRAMark(keys); s != "" {
		return KindLoRA, "tensor names with " + s
	}
	if s := has("control_model.", "controlnet_cond_embedding", "controlnet_down_blocks", "controlnet_mid_block"); s != "" {
		return KindControlNet, "tensor names with " + s
	}
	if has("model.diffusion_model.") != "" {
		switch {
		case has("conditioner.embedders.1.") != "":
			return KindCheckpoint, "conditioner.embedders + model.diffusion_model (SDXL base)"
		case has("conditioner.embedders.") != "":
			return KindRefiner, "one conditioner embedder + model.diffusion_model (SDXL refiner)"
		default:
			return KindCheckpoint, "model.diffusion_model without conditioner.embedders (not SDXL)"
		}
	}
	if prefixed("encoder.", "decoder.", "quant_conv.", "post_quant_conv.") {
		return KindVAE, "only encoder./decoder. tensors"
	}
	if prefixed("first_stage_model.") {
		return KindVAE, "only first_stage_model. tensors"
	}
	if s := has("conv_first.", "RRDB_trunk.", "body.", "model.0.weight", "residual_group"); s != "" {
		return KindUpscaler, "ESRGAN-like tensor names (" + s + ")"
	}
	return KindUnknown, ""
}

// hubName names a folder of the Hugging Face hub cache
// (models--stabilityai--sdxl/snapshots/HASH) by its repository,
// "stabilityai/sdxl"; any other folder by its base name.
func hubName(path string) string {
	snap, repo := filepath.Dir(path), filepath.Dir(filepath.Dir(path))
	if filepath.Base(snap) == "snapshots" && strings.HasPrefix(filepath.Base(repo), "models--") {
		return strings.ReplaceAll(strings.TrimPrefix(filepath.Base(repo), "models--"), "--", "/")
	}
	return filepath.Base(path)
}

// orEmpty keeps a nil list from being written as JSON null.
func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

package request

import (
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"atelier/core/failure"
)

// Prepare is the one step from a valid request to one the worker can run, and
// the only one that touches the disk: it validates r, checks the model on disk,
// makes every path absolute (the worker runs in another folder), defaults the
// batch size to 1 and draws a random seed, so that the history keeps the seed
// that runs. It leaves OutputDir alone. Its errors are a *ValidationError, or a
// *failure.JobError naming the field.
func (r *Request) Prepare() error {
	if err := r.Validate(); err != nil {
		return err
	}
	if err := r.prepareFiles(); err != nil {
		return err
	}
	return r.ResolveSeed()
}

// PrepareForQueue is Prepare for a job that waits in the queue: the model is
// checked now (so a typo fails now, not at 3 a.m.), and the queue shows the
// seed that will run. A queued job has no output folder yet.
func PrepareForQueue(req Request) (Request, error) {
	if err := req.Prepare(); err != nil {
		return req, err
	}
	req.OutputDir = ""
	return req, nil
}

// PrepareQueued is Prepare for a job the queue kept: it was validated when it
// was queued, so only what may have changed since is checked again (the files
// it names), and a seed still random is drawn. Every error is a
// *failure.JobError.
func (r *Request) PrepareQueued() error {
	if err := r.prepareFiles(); err != nil {
		return err
	}
	if r.Seed < 0 {
		if err := r.ResolveSeed(); err != nil {
			return &failure.JobError{Op: "draw the seed", Code: failure.ErrInvalidRequest, Field: "seed", Message: err.Error()}
		}
	}
	return nil
}

// prepareFiles checks the model, resolves the paths, checks what the files
// hold and defaults the batch size.
func (r *Request) prepareFiles() error {
	model, err := r.checkModel()
	if err != nil {
		return err
	}
	r.Model = model
	if err := r.ResolvePaths(); err != nil {
		return err
	}
	if err := r.checkContents(); err != nil {
		return err
	}
	if r.BatchSize == 0 {
		r.BatchSize = 1
	}
	return nil
}

// randomSeedLimit keeps random seeds below 2^32: such seeds can be typed into
// other tools (many take 32-bit seeds), and seed+batch stays far from MaxSeed.
const randomSeedLimit = 1 << 32

// ResolveSeed replaces a seed of -1 with a random one, and checks that every
// image of the batch (seed + i) has a valid seed.
func (r *Request) ResolveSeed() error {
	if r.Seed < 0 {
		r.Seed = mrand.Int64N(randomSeedLimit)
	}
	batch := int64(max(r.BatchSize, 1))
	if r.Seed+batch-1 > MaxSeed {
		return &ValidationError{Fields: []*FieldError{{Field: "seed",
			Message: fmt.Sprintf("seed + batch size - 1 must not exceed %d, got %d", MaxSeed, r.Seed+batch-1)}}}
	}
	return nil
}

// checkModel is CheckModel for the request's model; an upscale-only request
// loads no model, so its model (kept for the record) is not checked.
func (r *Request) checkModel() (string, error) {
	if r.UpscaleOnly {
		return r.Model, nil
	}
	return CheckModel(r.Model)
}

// CheckModel checks that a model exists on disk and looks loadable, and
// returns the form to send to the worker: "tiny", or an absolute path (the
// worker runs in another folder). Its errors are *failure.JobError naming the field
// "model", with code model_not_found or unsupported.
func CheckModel(model string) (string, error) {
	model = strings.TrimSpace(model)
	if model == TinyModel || model == TinySingleFile {
		return model, nil
	}
	notFound := func(format string, args ...any) error {
		return &failure.JobError{Code: failure.ErrModelNotFound, Field: "model", Message: fmt.Sprintf(format, args...)}
	}
	unsupported := func(format string, args ...any) error {
		return &failure.JobError{Code: failure.ErrUnsupported, Field: "model", Message: fmt.Sprintf(format, args...)}
	}
	if model == "" {
		return "", notFound("no model given: use %q or the path of a diffusers model folder", TinyModel)
	}
	path, err := ResolveFile(model)
	if err != nil {
		return "", notFound("model path %s: %v", model, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", notFound("model %s does not exist: use %q, or the path of a diffusers model folder "+
				"(with model_index.json and unet/) or a .safetensors file", path, TinyModel)
		}
		return "", notFound("model %s cannot be read: %v", path, err)
	}
	if !fi.IsDir() {
		ext := strings.ToLower(filepath.Ext(path))
		if slices.Contains(pickleExts, ext) {
			return "", unsupported("model %s is a pickle checkpoint (%s), which can run arbitrary code when loaded, "+
				"so Atelier never loads one: use the model's .safetensors file or diffusers folder instead", path, ext)
		}
		if ext != ".safetensors" {
			return "", unsupported("model %s is neither a diffusers model folder nor a .safetensors file", path)
		}
		return path, nil
	}
	if _, err := os.Stat(filepath.Join(path, "model_index.json")); err != nil {
		return "", notFound("model folder %s has no model_index.json, so it is not a diffusers model: "+
			"choose the folder that holds model_index.json, or download the model again", path)
	}
	if fi, err := os.Stat(filepath.Join(path, "unet")); err != nil || !fi.IsDir() {
		return "", notFound("model folder %s has no unet/ folder, so the download is incomplete: download the model again", path)
	}
	return path, nil
}

// ResolvePaths checks that every file the request names (LoRAs, ControlNet
// models and images, refiner, VAE, init image, mask, upscaler) exists, and
// makes each path absolute, since the worker runs in another folder. Tiny
// names and "lanczos" pass through. Errors are *failure.JobError naming the field.
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
			firstErr = &failure.JobError{Op: "resolve " + field, Err: err, Code: failure.ErrInvalidRequest, Field: field, Message: err.Error()}
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

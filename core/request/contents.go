package request

import (
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"strings"

	_ "image/gif" // gif: its size

	"atelier/core/failure"
	"atelier/core/safetensors"
)

// checkContents opens the files the request names and refuses, naming the
// field, what the worker would refuse after starting (seconds later, with a
// failed job in the history): a .safetensors file whose header cannot be read,
// a LoRA with no LoRA weights, an image that is damaged or cut short, a mask
// of another size than its init image. What only the loaded model can judge
// is left to the worker. The paths are already absolute; tiny names pass.
func (r *Request) checkContents() error {
	if !r.UpscaleOnly && r.Model != TinyModel && r.Model != TinySingleFile && isFile(r.Model) {
		if _, err := safetensors.Keys(r.Model); err != nil {
			return contentError("model", failure.ErrUnsupported, "%s", unreadable(r.Model, err))
		}
	}
	for i, l := range r.LoRAs {
		if err := checkLoRA(fmt.Sprintf("loras[%d].path", i), l.Path); err != nil {
			return err
		}
	}
	if r.VAE != "" && r.VAE != TinyVAE && isFile(r.VAE) {
		if err := checkWeightsFile("vae", "VAE", r.VAE); err != nil {
			return err
		}
	}
	if r.Upscaler != "" && r.Upscaler != LanczosUpscaler && r.Upscaler != TinyUpscaler {
		if err := checkWeightsFile("upscaler", "upscaler model", r.Upscaler); err != nil {
			return err
		}
	}
	for i, c := range r.ControlNets {
		if _, err := checkImage(fmt.Sprintf("controlnets[%d].image", i), c.Image); err != nil {
			return err
		}
	}
	var initSize *image.Point
	if r.InitImage != "" {
		size, err := checkImage("init_image", r.InitImage)
		if err != nil {
			return err
		}
		initSize = size
	}
	if r.MaskImage != "" {
		size, err := checkImage("mask_image", r.MaskImage)
		if err != nil {
			return err
		}
		if size != nil && initSize != nil && *size != *initSize {
			return contentError("mask_image", failure.ErrInvalidRequest,
				"the mask is %dx%d but the init image is %dx%d: paint the mask on the same picture", size.X, size.Y, initSize.X, initSize.Y)
		}
	}
	return nil
}

func contentError(field string, code failure.ErrorCode, format string, args ...any) error {
	return &failure.JobError{Op: "check " + field, Code: code, Field: field, Message: fmt.Sprintf(format, args...)}
}

func isFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

// checkWeightsFile refuses a weights file the worker loads only as
// .safetensors when it is not one, or its header cannot be read.
func checkWeightsFile(field, what, path string) error {
	_, err := weightsKeys(field, what, path)
	return err
}

func weightsKeys(field, what, path string) ([]string, error) {
	if !strings.EqualFold(filepath.Ext(path), ".safetensors") {
		return nil, contentError(field, failure.ErrInvalidRequest, "%s is not a %s file: expected .safetensors", path, what)
	}
	keys, err := safetensors.Keys(path)
	if err != nil {
		return nil, contentError(field, failure.ErrInvalidRequest, "%s", unreadable(path, err))
	}
	return keys, nil
}

// unreadable says why a weights file's header cannot be read.
func unreadable(path string, err error) string {
	if errors.Is(err, safetensors.ErrNotSafetensors) {
		return fmt.Sprintf("%s is %v: download it again, or choose the file itself", path, err)
	}
	return fmt.Sprintf("%s cannot be read: %v", path, err)
}

// checkLoRA refuses a LoRA file that is no .safetensors, cannot be read, or
// holds no LoRA weights at all (a VAE or checkpoint given as a LoRA). Whether
// its weights fit this model only the worker can tell.
func checkLoRA(field, path string) error {
	if path == TinyLoRA {
		return nil
	}
	keys, err := weightsKeys(field, "LoRA", path)
	if err != nil {
		return err
	}
	if safetensors.LoRAMark(keys) == "" {
		return contentError(field, failure.ErrInvalidRequest, "%s holds no LoRA weights (none of its %d tensor names is a LoRA's, "+
			"such as lora_down/lora_up or lora_A/lora_B): a VAE, checkpoint or upscaler goes in its own field", path, len(keys))
	}
	return nil
}

// maxDecodePixels bounds the images decoded whole here; a larger one is only
// checked by its header, and the worker reads the rest.
const maxDecodePixels = 8192 * 8192

// imageExts are the names of files whose format Go reads itself; only of
// them can a content that is no image be told apart from one the worker
// reads and Go does not (WebP, TIFF, …).
var imageExts = []string{".png", ".jpg", ".jpeg", ".gif"}

// checkImage refuses an input image that is no image or is damaged or cut
// short, and returns its size. A format Go does not read (nil size, no error)
// is left to the worker, as are JPEG oddities that its decoder forgives.
func checkImage(field, path string) (*image.Point, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, contentError(field, failure.ErrInvalidRequest, "%s cannot be read: %v", path, err)
	}
	defer f.Close()
	cfg, format, err := image.DecodeConfig(f)
	if errors.Is(err, image.ErrFormat) {
		ext := strings.ToLower(filepath.Ext(path))
		for _, e := range imageExts {
			if ext == e {
				return nil, contentError(field, failure.ErrInvalidRequest, "%s is not an image: its content is no PNG, JPEG or GIF", path)
			}
		}
		return nil, nil
	}
	if err != nil {
		if unsupported(err) {
			return nil, nil
		}
		return nil, contentError(field, failure.ErrInvalidRequest, "%s is not a readable image (%v): save or export it again", path, err)
	}
	size := &image.Point{X: cfg.Width, Y: cfg.Height}
	if int64(cfg.Width)*int64(cfg.Height) > maxDecodePixels {
		return size, nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return size, nil
	}
	switch format {
	case "png":
		_, err = png.Decode(f)
	case "jpeg":
		if _, err = jpeg.Decode(f); !cutShort(err) {
			err = nil // only a cut-short JPEG is sure to fail in the worker too
		}
	}
	if err != nil && !unsupported(err) {
		return nil, contentError(field, failure.ErrInvalidRequest, "%s is damaged or cut short (%v): save or export it again", path, err)
	}
	return size, nil
}

// cutShort says a JPEG ended early: in its headers, or in its scan data
// (which Go's decoder calls short Huffman data).
func cutShort(err error) bool {
	var fe jpeg.FormatError
	return errors.Is(err, io.ErrUnexpectedEOF) || (errors.As(err, &fe) && fe == "short Huffman data")
}

// unsupported says the Go decoder lacks a feature the image uses, which
// tells nothing about the file.
func unsupported(err error) bool {
	var p png.UnsupportedError
	var j jpeg.UnsupportedError
	return errors.As(err, &p) || errors.As(err, &j)
}

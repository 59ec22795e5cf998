package request

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/internal/sttest"
)

func encodeTestImage(t *testing.T, w, h int, enc func(*bytes.Buffer, image.Image) error) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for i := range img.Pix {
		img.Pix[i] = byte(i * 7)
	}
	var buf bytes.Buffer
	require.NoError(t, enc(&buf, img))
	return buf.Bytes()
}

func pngBytes(t *testing.T, w, h int) []byte {
	return encodeTestImage(t, w, h, func(b *bytes.Buffer, m image.Image) error { return png.Encode(b, m) })
}

func jpegBytes(t *testing.T, w, h int) []byte {
	return encodeTestImage(t, w, h, func(b *bytes.Buffer, m image.Image) error { return jpeg.Encode(b, m, nil) })
}

func TestPrepareRefusesDamagedFilesNamingTheField(t *testing.T) {
	dir := t.TempDir()
	file := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, b, 0o644))
		return p
	}
	whole, jpg := pngBytes(t, 64, 64), jpegBytes(t, 64, 64)
	initImg := file("init.png", whole)
	cutPNG := file("cut.png", whole[:len(whole)/2])
	cutJPEG := file("cut.jpg", jpg[:len(jpg)/2])
	badCRC := append([]byte{}, whole...)
	badCRC[len(badCRC)-20] ^= 0xff // inside IDAT
	corruptPNG := file("crc.png", badCRC)
	mask32 := file("mask32.png", pngBytes(t, 32, 32))
	notes := file("notes.png", []byte("not a picture"))
	webp := file("photo.webp", []byte("RIFF....WEBPVP8 whatever the worker makes of it"))
	junkST := file("junk.safetensors", []byte("<html>404</html>"))
	vae := sttest.Write(t, filepath.Join(dir, "vae.safetensors"), "encoder.conv_in.weight", "decoder.conv_out.weight")
	lora := sttest.Write(t, filepath.Join(dir, "style.safetensors"), "lora_unet_x.lora_down.weight", "lora_unet_x.lora_up.weight")
	loraBin := file("style.bin.txt", []byte("x"))

	for _, tc := range []struct {
		name  string
		mod   func(*Request)
		field string // "" = accepted
		code  failure.ErrorCode
		msg   string
	}{
		{"a good LoRA, init image, mask and VAE", func(r *Request) {
			r.LoRAs = []LoRA{{Path: lora, Weight: 1}, {Path: TinyLoRA, Weight: 1}}
			r.InitImage, r.MaskImage, r.Strength, r.VAE = initImg, initImg, 0.5, vae
		}, "", "", ""},
		{"a model that is no safetensors", func(r *Request) { r.Model = junkST }, "model", failure.ErrUnsupported, "is not a safetensors file"},
		{"an upscale-only job loads no model", func(r *Request) {
			r.Model, r.UpscaleOnly, r.InitImage, r.Upscaler = junkST, true, initImg, LanczosUpscaler
		}, "", "", ""},
		{"a LoRA that is no safetensors", func(r *Request) { r.LoRAs = []LoRA{{Path: junkST, Weight: 1}} }, "loras[0].path", failure.ErrInvalidRequest, "is not a safetensors file"},
		{"a LoRA of another format", func(r *Request) { r.LoRAs = []LoRA{{Path: loraBin, Weight: 1}} }, "loras[0].path", failure.ErrInvalidRequest, "expected .safetensors"},
		{"a VAE given as a LoRA", func(r *Request) { r.LoRAs = []LoRA{{Path: lora, Weight: 1}, {Path: vae, Weight: 1}} }, "loras[1].path", failure.ErrInvalidRequest, "holds no LoRA weights"},
		{"a VAE file that is no safetensors", func(r *Request) { r.VAE = junkST }, "vae", failure.ErrInvalidRequest, "is not a safetensors file"},
		{"an upscaler that is no safetensors", func(r *Request) { r.Upscaler = junkST }, "upscaler", failure.ErrInvalidRequest, "is not a safetensors file"},
		{"a truncated PNG", func(r *Request) { r.InitImage, r.Strength = cutPNG, 0.5 }, "init_image", failure.ErrInvalidRequest, "damaged or cut short"},
		{"a PNG with a bad checksum", func(r *Request) { r.InitImage, r.Strength = corruptPNG, 0.5 }, "init_image", failure.ErrInvalidRequest, "damaged or cut short"},
		{"a truncated JPEG", func(r *Request) { r.InitImage, r.Strength = cutJPEG, 0.5 }, "init_image", failure.ErrInvalidRequest, "damaged or cut short"},
		{"a .png that is no image", func(r *Request) { r.InitImage, r.Strength = notes, 0.5 }, "init_image", failure.ErrInvalidRequest, "not an image"},
		{"a format only the worker reads is left to it", func(r *Request) { r.InitImage, r.Strength = webp, 0.5 }, "", "", ""},
		{"a mask of another size", func(r *Request) { r.InitImage, r.MaskImage, r.Strength = initImg, mask32, 0.5 }, "mask_image", failure.ErrInvalidRequest,
			"the mask is 32x32 but the init image is 64x64"},
		{"a truncated control image", withCN(func(c *ControlNet) { c.Image = cutPNG }), "controlnets[0].image", failure.ErrInvalidRequest, "damaged or cut short"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := featureBase()
			tc.mod(&r)
			err := r.Prepare()
			if tc.field == "" {
				require.NoError(t, err)
				return
			}
			var jerr *failure.JobError
			require.ErrorAs(t, err, &jerr)
			assert.Equal(t, tc.field, jerr.Field)
			assert.Equal(t, tc.code, jerr.Code)
			assert.Contains(t, jerr.Message, tc.msg)

			// A queued job is checked again when it runs: the file may have changed.
			err = r.PrepareQueued()
			require.ErrorAs(t, err, &jerr)
			assert.Equal(t, tc.field, jerr.Field)
		})
	}
}

func TestCheckImageLeavesWhatGoCannotJudgeToTheWorker(t *testing.T) {
	dir := t.TempDir()
	// A JPEG whose scan data is damaged but complete: libjpeg decodes it with
	// a warning, so only the worker can say.
	jpg := jpegBytes(t, 64, 64)
	for i := len(jpg) / 2; i < len(jpg)/2+8; i++ {
		jpg[i] = 0
	}
	p := filepath.Join(dir, "odd.jpg")
	require.NoError(t, os.WriteFile(p, jpg, 0o644))
	size, err := checkImage("init_image", p)
	require.NoError(t, err)
	assert.Equal(t, &image.Point{X: 64, Y: 64}, size)

	p = filepath.Join(dir, "scan.tiff")
	require.NoError(t, os.WriteFile(p, []byte("II*\x00 a TIFF Go does not read"), 0o644))
	size, err = checkImage("init_image", p)
	require.NoError(t, err)
	assert.Nil(t, size, "no size: the mask's is not compared")

	img := image.NewGray(image.Rect(0, 0, 8, 8))
	img.Set(1, 1, color.White)
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, img))
	p = filepath.Join(dir, "gray.png")
	require.NoError(t, os.WriteFile(p, buf.Bytes(), 0o644))
	size, err = checkImage("mask_image", p)
	require.NoError(t, err)
	assert.Equal(t, &image.Point{X: 8, Y: 8}, size)
}

package request

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestValidateWire(t *testing.T) {
	r := DefaultRequest()
	r.Prompt = "p"
	err := r.ValidateWire()
	v, ok := AsValidation(err)
	require.True(t, ok, "a default request has no seed or output folder yet: %v", err)
	assert.NotNil(t, v.Field("seed"))
	assert.NotNil(t, v.Field("output_dir"))
	r.Seed, r.OutputDir = 42, filepath.Join(t.TempDir(), "out")
	require.NoError(t, r.ValidateWire())
}

func TestControlCharactersAreRefusedByField(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mod   func(*Request)
		field string // "" = valid
		msg   string
	}{
		{"newlines and tabs in the prompts", func(r *Request) {
			r.Prompt, r.NegativePrompt = "a lighthouse,\n\tat dusk", "fog\nrain"
		}, "", ""},
		{"unicode in the prompt", func(r *Request) { r.Prompt = "un phare, été ☀" }, "", ""},
		{"NUL in the prompt", func(r *Request) { r.Prompt = "a light\x00house" }, "prompt", "U+0000 at character 8"},
		{"carriage return in the prompt", func(r *Request) { r.Prompt = "a lighthouse\r\n" }, "prompt", "U+000D at character 13"},
		{"escape in the negative prompt", func(r *Request) { r.NegativePrompt = "é\x1b[31m" }, "negative_prompt", "U+001B at character 2"},
		{"C1 control in the prompt", func(r *Request) { r.Prompt = "a\u0085b" }, "prompt", "U+0085"},
		{"DEL in the prompt", func(r *Request) { r.Prompt = "a\x7f" }, "prompt", "U+007F"},
		{"newline in the model path", func(r *Request) { r.Model = "/models/a\nb" }, "model", "U+000A at character 10"},
		{"tab in a LoRA path", func(r *Request) { r.LoRAs = []LoRA{{Path: TinyLoRA, Weight: 1}, {Path: "a\tb.safetensors", Weight: 1}} }, "loras[1].path", "U+0009"},
		{"control in a control image", withCN(func(c *ControlNet) { c.Image = "edges\x01.png" }), "controlnets[0].image", "U+0001"},
		{"control in the VAE", func(r *Request) { r.VAE = "v\x02ae.safetensors" }, "vae", "U+0002"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := featureBase()
			tc.mod(&r)
			err := r.Validate()
			if tc.field == "" {
				assert.NoError(t, err)
				return
			}
			v, ok := AsValidation(err)
			require.True(t, ok, "want a validation error naming %s, got %v", tc.field, err)
			require.Len(t, v.Fields, 1, "only %s is wrong: %v", tc.field, err)
			fe := v.Field(tc.field)
			require.NotNil(t, fe, "want an error naming %s, got %v", tc.field, err)
			assert.Contains(t, fe.Message, "control characters")
			assert.Contains(t, fe.Message, tc.msg)
		})
	}
}

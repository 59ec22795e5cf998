package protocol

import (
	"encoding/json"
	"testing"

	"atelier/core/request"
	"atelier/core/spec"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFeatureFieldsRoundTripOnTheWire(t *testing.T) {
	r := featureBase()
	r.Seed, r.OutputDir = 7, "/o"
	r.Schedule = "karras"
	r.LoRAs = []request.LoRA{{Path: request.TinyLoRA, Weight: -1.5}}
	c := request.DefaultControlNet()
	c.Image, c.Scale, c.CannyLow = "/c.png", 0, 0
	r.ControlNets = []request.ControlNet{c}
	r.Refiner, r.RefinerSwitch = request.TinyRefiner, 0.7
	r.VAE = request.TinyVAE
	r.InitImage, r.Strength, r.MaskImage, r.MaskBlur, r.MaskPadding = "/i.png", 0.5, "/m.png", request.IntPtr(0), 16
	r.Upscaler, r.Upscale = request.LanczosUpscaler, 1.5
	line, err := Encode(Generate{ID: "job-1", Request: &r})
	require.NoError(t, err)
	// Zero values that mean something must travel: scale 0, canny_low 0, mask_blur 0.
	assert.Contains(t, string(line), `"scale":0`)
	assert.Contains(t, string(line), `"canny_low":0`)
	assert.Contains(t, string(line), `"mask_blur":0`)
	m, err := Decode(line)
	require.NoError(t, err)
	require.IsType(t, Generate{}, m)
	assert.Equal(t, r, *m.(Generate).Request)

	// encoding/json (the history's copy of a request) keeps them too.
	b, err := json.Marshal(r)
	require.NoError(t, err)
	var back request.Request
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, r, back)
}

func TestResultCarriesControlImagesAndVAEFallback(t *testing.T) {
	m, err := Decode([]byte(`{"type":"result","id":"j","images":[{"path":"/o/j-0.png","seed":1,"width":64,"height":64}],` +
		`"metrics":{"total_s":1,"vae_fallback":true,"batch_chunks":2},"control_images":["/o/j-control-0.png"]}`))
	require.NoError(t, err)
	require.IsType(t, Result{}, m)
	res := m.(Result)
	assert.True(t, res.Metrics.VAEFallback)
	assert.Equal(t, 2, res.Metrics.BatchChunks)
	assert.Equal(t, []string{"/o/j-control-0.png"}, res.ControlImages)
}

func TestHelloCarriesSchedules(t *testing.T) {
	m, err := Decode([]byte(`{"type":"hello","protocol":1,"worker_version":"0.1.0","device":"cpu","dtype":"float32",` +
		`"devices":[],"capabilities":{"schedulers":["euler","ddim"],"controlnet_types":["canny"],"features":["lora"],` +
		`"schedules":{"euler":["karras","beta"],"ddim":[]}},"versions":{}}`))
	require.NoError(t, err)
	require.IsType(t, Hello{}, m)
	caps := m.(Hello).Capabilities
	require.NotNil(t, caps)
	assert.Equal(t, map[string][]string{"euler": {"karras", "beta"}, "ddim": {}}, caps.Schedules)
	assert.True(t, caps.Has("lora"))
	assert.False(t, caps.Has("refiner"))
}

func TestHeartbeatIsASpecFeature(t *testing.T) {
	assert.Contains(t, spec.Features, FeatureHeartbeat)
	line, err := Encode(Heartbeat{ID: "job-1"})
	require.NoError(t, err)
	assert.JSONEq(t, `{"type":"heartbeat","id":"job-1"}`, string(line))
	_, err = Encode(Heartbeat{})
	assert.ErrorIs(t, err, ErrMalformed, "a heartbeat names the job it beats for")
}

// featureBase is a valid request that the cases below change one thing of.
func featureBase() request.Request {
	r := request.DefaultRequest()
	r.Prompt = "a lighthouse"
	r.Width, r.Height, r.Steps = 64, 64, 4
	return r
}

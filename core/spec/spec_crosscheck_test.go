package spec_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/infotext"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/spec"
)

// The constants below are still typed by hand in core. Until core uses package spec,
// these checks are what keep the two equal: a limit changed on one side only fails here.

func TestCoreConstantsMatchSpec(t *testing.T) {
	for _, c := range []struct {
		name       string
		core, spec any
	}{
		{"ProtocolVersion", protocol.ProtocolVersion, spec.ProtocolVersion},
		{"MaxLineBytes", protocol.MaxLineBytes, spec.MaxLineBytes},
		{"MaxIDLen", protocol.MaxIDLen, spec.MaxIDLen},

		{"MinSteps", request.MinSteps, spec.MinSteps},
		{"MaxSteps", request.MaxSteps, spec.MaxSteps},
		{"MinCFG", request.MinCFG, spec.MinCFG},
		{"MaxCFG", request.MaxCFG, spec.MaxCFG},
		{"MinSize", request.MinSize, spec.MinSize},
		{"MaxSize", request.MaxSize, spec.MaxSize},
		{"SizeMultiple", request.SizeMultiple, spec.SizeMultiple},
		{"MinBatch", request.MinBatch, spec.MinBatch},
		{"MaxBatch", request.MaxBatch, spec.MaxBatch},
		{"MaxSeed", request.MaxSeed, spec.MaxSeed},
		{"MinLoRAWeight", request.MinLoRAWeight, spec.MinLoRAWeight},
		{"MaxLoRAWeight", request.MaxLoRAWeight, spec.MaxLoRAWeight},
		{"MaxLoRAs", request.MaxLoRAs, spec.MaxLoRAs},
		{"MaxControlNets", request.MaxControlNets, spec.MaxControlNets},
		{"MinControlScale", request.MinControlScale, spec.MinControlScale},
		{"MaxControlScale", request.MaxControlScale, spec.MaxControlScale},
		{"MinCanny", request.MinCanny, spec.MinCanny},
		{"MaxCanny", request.MaxCanny, spec.MaxCanny},
		{"MinMaskBlur", request.MinMaskBlur, spec.MinMaskBlur},
		{"MaxMaskBlur", request.MaxMaskBlur, spec.MaxMaskBlur},
		{"MinMaskPadding", request.MinMaskPadding, spec.MinMaskPadding},
		{"MaxMaskPadding", request.MaxMaskPadding, spec.MaxMaskPadding},
		{"MinUpscale", request.MinUpscale, spec.MinUpscale},
		{"MaxUpscale", request.MaxUpscale, spec.MaxUpscale},
		{"MinHires", request.MinHires, spec.MinHires},
		{"MaxHires", request.MaxHires, spec.MaxHires},
		{"MinBatchCount", request.MinBatchCount, spec.MinBatchCount},
		{"MaxBatchCount", request.MaxBatchCount, spec.MaxBatchCount},

		{"DefaultControlScale", request.DefaultControlScale, spec.DefaultControlScale},
		{"DefaultCannyLow", request.DefaultCannyLow, spec.DefaultCannyLow},
		{"DefaultCannyHigh", request.DefaultCannyHigh, spec.DefaultCannyHigh},
		{"DefaultRefinerSwitch", request.DefaultRefinerSwitch, spec.DefaultRefinerSwitch},
		{"DefaultStrength", request.DefaultStrength, spec.DefaultStrength},
		{"DefaultMaskBlur", request.DefaultMaskBlur, spec.DefaultMaskBlur},
		{"DefaultUpscale", request.DefaultUpscale, spec.DefaultUpscale},
		{"DefaultHiresScale", request.DefaultHiresScale, spec.DefaultHiresScale},
		{"DefaultHiresStrength", request.DefaultHiresStrength, spec.DefaultHiresStrength},
		{"DefaultRequest().Scheduler", request.DefaultRequest().Scheduler, spec.DefaultScheduler},

		{"TinyModel", request.TinyModel, spec.TinyModel},
		{"TinyLoRA", request.TinyLoRA, spec.TinyLoRA},
		{"TinyControlNet", request.TinyControlNet, spec.TinyControlNet},
		{"TinyRefiner", request.TinyRefiner, spec.TinyRefiner},
		{"TinyVAE", request.TinyVAE, spec.TinyVAE},
		{"TinyUpscaler", request.TinyUpscaler, spec.TinyUpscaler},
		{"TinySingleFile", request.TinySingleFile, spec.TinySingleFile},
		{"LanczosUpscaler", request.LanczosUpscaler, spec.LanczosUpscaler},
	} {
		// Boxing keeps the kind: an int limit that became a float (or back) differs too.
		assert.Equal(t, c.spec, c.core, "core.%s differs from docs/protocol/spec.json", c.name)
	}
}

func TestCoreListsMatchSpec(t *testing.T) {
	codes := make([]string, len(failure.ErrorCodes))
	for i, c := range failure.ErrorCodes {
		codes[i] = string(c)
	}
	specCodes := make([]string, len(spec.ErrorCodes))
	for i, c := range spec.ErrorCodes {
		specCodes[i] = string(c)
	}
	assert.Equal(t, specCodes, codes, "core.ErrorCodes")
	assert.Equal(t, spec.GoToWorker, []string{protocol.MsgGenerate, protocol.MsgCancel, protocol.MsgPing, protocol.MsgUnload, protocol.MsgShutdown}, "core.Msg* (Go to worker)")
	assert.Equal(t, spec.WorkerToGo, []string{protocol.MsgLoading, protocol.MsgHello, protocol.MsgAccepted, protocol.MsgProgress,
		protocol.MsgPreview, protocol.MsgResult, protocol.MsgError, protocol.MsgPong, protocol.MsgHeartbeat}, "core.Msg* (worker to Go)")
	assert.Equal(t, spec.Stages, protocol.Stages, "core.Stages")
	assert.Equal(t, spec.DeviceKinds, protocol.DeviceKinds, "core.DeviceKinds")
	// core lists dpmpp_2m and dpmpp_sde before ddim; the spec keeps the worker's and
	// docs/protocol.md's order (the menu's once a worker said hello). Same names.
	assert.Equal(t, spec.Schedulers, request.Schedulers, "request.Schedulers (the menu order)")
	assert.Equal(t, spec.SamplerNames, request.SamplerNames, "core.SamplerNames")
	assert.Equal(t, spec.Schedules, request.Schedules, "core.Schedules")
	assert.Equal(t, spec.ScheduleNames, request.ScheduleNames, "core.ScheduleNames")
	assert.Equal(t, spec.ControlNetTypes, request.ControlNetTypes, "core.ControlNetTypes")
}

// TestCoreDecodeDefaultsMatchSpec: what core's decoder fills in for absent fields.
func TestCoreDecodeDefaultsMatchSpec(t *testing.T) {
	line := `{"type":"generate","id":"a","request":{"prompt":"p","model":"tiny","steps":4,"cfg":5,` +
		`"width":64,"height":64,"seed":1,"output_dir":"/tmp/out","loras":[{"path":"tiny-lora"}],` +
		`"controlnets":[{"type":"canny","model":"tiny-controlnet","image":"/tmp/e.png"}]}}`
	m, err := protocol.Decode([]byte(line))
	require.NoError(t, err)
	req := m.(protocol.Generate).Request
	l, c := req.LoRAs[0], req.ControlNets[0]
	assert.Equal(t, spec.DefaultLoRAWeight, l.Weight, "an absent LoRA weight")
	assert.Equal(t, spec.DefaultControlScale, c.Scale, "an absent ControlNet scale")
	assert.Equal(t, spec.DefaultControlStart, c.Start, "an absent ControlNet start")
	assert.Equal(t, spec.DefaultControlEnd, c.End, "an absent ControlNet end")
	assert.Equal(t, spec.DefaultCannyLow, c.CannyLow, "an absent canny_low")
	assert.Equal(t, spec.DefaultCannyHigh, c.CannyHigh, "an absent canny_high")
}

// TestCorePickleExtsMatchSpec: core's list is unexported, so this asks Validate which
// extensions of the spec's list, and of other weights formats, it refuses as pickle.
func TestCorePickleExtsMatchSpec(t *testing.T) {
	others := []string{".safetensors", ".gguf", ".onnx", ".pt2", ".npz", ".h5", ".json", ".sft", ".joblib"}
	for _, ext := range append(append([]string{}, spec.PickleExts...), others...) {
		for _, e := range []string{ext, strings.ToUpper(ext)} {
			r := request.DefaultRequest()
			r.Prompt, r.Model = "p", "/models/m"+e
			err := r.Validate()
			refused := false
			if v, ok := request.AsValidation(err); ok {
				if f := v.Field("model"); f != nil && strings.Contains(f.Message, "pickle") {
					refused = true
				}
			}
			assert.Equal(t, slices.Contains(spec.PickleExts, ext), refused, "core refuses a %s model as pickle", e)
		}
	}
}

// TestCoreInfotextReadsSpecKeys: core reads the parameters text the worker writes with
// the spec's keys.
func TestCoreInfotextReadsSpecKeys(t *testing.T) {
	kv := func(k, v string) string { return k + ": " + v }
	text := func(pairs ...string) string {
		return "a lighthouse\n" + spec.InfotextNegativePrompt + " fog\n" + strings.Join(append([]string{
			kv(spec.InfotextSteps, "7"), kv(spec.InfotextSampler, spec.SamplerNames["dpmpp_2m"]),
			kv(spec.InfotextScheduleType, spec.ScheduleNames["karras"]), kv(spec.InfotextCFGScale, "6.5"),
			kv(spec.InfotextSeed, "42"), kv(spec.InfotextSize, "64x128"), kv(spec.InfotextModel, spec.TinyModel),
		}, append(pairs, kv(spec.InfotextVersion, spec.InfotextVersionPrefix+"0.1.0"))...), ", ")
	}
	unit := strings.Join([]string{kv(spec.InfotextUnitModule, "canny"), kv(spec.InfotextUnitModel, spec.TinyControlNet),
		kv(spec.InfotextUnitWeight, "1"), kv(spec.InfotextUnitGuidanceStart, "0"), kv(spec.InfotextUnitGuidanceEnd, "1"),
		kv(spec.InfotextUnitThresholdA, "100"), kv(spec.InfotextUnitThresholdB, "200")}, ", ")

	req := request.DefaultRequest()
	notes := infotext.ParseInfotext(text(
		kv(spec.InfotextDenoisingStrength, "0.6"), kv(spec.InfotextMaskBlur, "3"),
		kv(spec.InfotextInpaintArea, spec.InfotextOnlyMasked), kv(spec.InfotextMaskedAreaPadding, "16"),
		kv(spec.InfotextVAE, spec.TinyVAE), kv(spec.InfotextLoRAHashes, `"tiny-lora: 0123456789"`),
		kv(spec.InfotextLoRAs, `"<lora:tiny-lora:0.8>"`), kv(spec.InfotextControlNet+" 0", `"`+unit+`"`),
		kv(spec.InfotextRefiner, spec.TinyRefiner), kv(spec.InfotextRefinerSwitchAt, "0.7"),
		kv(spec.InfotextPostprocessUpscaler, spec.InfotextLanczos), kv(spec.InfotextPostprocessUpscaleBy, "3"),
	)).ApplyTo(&req)
	want := request.DefaultRequest()
	want.Prompt, want.NegativePrompt, want.Steps, want.Scheduler, want.Schedule = "a lighthouse", "fog", 7, "dpmpp_2m", "karras"
	want.CFG, want.Seed, want.Width, want.Height = 6.5, 42, 64, 128
	want.Strength, want.MaskBlur, want.MaskPadding, want.VAE = 0.6, request.IntPtr(3), 16, spec.TinyVAE
	want.LoRAs = []request.LoRA{{Path: spec.TinyLoRA, Weight: 0.8}}
	want.Refiner, want.RefinerSwitch, want.Upscaler, want.Upscale = spec.TinyRefiner, 0.7, spec.LanczosUpscaler, 3
	assert.Equal(t, want, req)
	require.Len(t, notes, 1, "only the ControlNet's image cannot come back")
	assert.Contains(t, notes[0], "ControlNet 0 (canny, "+spec.TinyControlNet+")")

	for _, hires := range []string{kv(spec.InfotextHiresUpscale, "2"), kv(spec.InfotextHiresResize, "128x256")} {
		req = request.DefaultRequest()
		notes = infotext.ParseInfotext(text(kv(spec.InfotextDenoisingStrength, "0.4"), hires,
			kv(spec.InfotextHiresSteps, "12"), kv(spec.InfotextHiresUpscaler, spec.InfotextLanczos))).ApplyTo(&req)
		assert.Empty(t, notes, hires)
		assert.Equal(t, []any{2.0, 12, 0.4, 0.0}, []any{req.HiresScale, req.HiresSteps, req.HiresStrength, req.Strength}, hires)
	}
}

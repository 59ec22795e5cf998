package spec_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core"
	"atelier/core/infotext"
	"atelier/core/spec"
)

// The constants below are still typed by hand in core. Until core uses package spec,
// these checks are what keep the two equal: a limit changed on one side only fails here.

func TestCoreConstantsMatchSpec(t *testing.T) {
	for _, c := range []struct {
		name       string
		core, spec any
	}{
		{"ProtocolVersion", core.ProtocolVersion, spec.ProtocolVersion},
		{"MaxLineBytes", core.MaxLineBytes, spec.MaxLineBytes},
		{"MaxIDLen", core.MaxIDLen, spec.MaxIDLen},

		{"MinSteps", core.MinSteps, spec.MinSteps},
		{"MaxSteps", core.MaxSteps, spec.MaxSteps},
		{"MinCFG", core.MinCFG, spec.MinCFG},
		{"MaxCFG", core.MaxCFG, spec.MaxCFG},
		{"MinSize", core.MinSize, spec.MinSize},
		{"MaxSize", core.MaxSize, spec.MaxSize},
		{"SizeMultiple", core.SizeMultiple, spec.SizeMultiple},
		{"MinBatch", core.MinBatch, spec.MinBatch},
		{"MaxBatch", core.MaxBatch, spec.MaxBatch},
		{"MaxSeed", core.MaxSeed, spec.MaxSeed},
		{"MinLoRAWeight", core.MinLoRAWeight, spec.MinLoRAWeight},
		{"MaxLoRAWeight", core.MaxLoRAWeight, spec.MaxLoRAWeight},
		{"MaxLoRAs", core.MaxLoRAs, spec.MaxLoRAs},
		{"MaxControlNets", core.MaxControlNets, spec.MaxControlNets},
		{"MinControlScale", core.MinControlScale, spec.MinControlScale},
		{"MaxControlScale", core.MaxControlScale, spec.MaxControlScale},
		{"MinCanny", core.MinCanny, spec.MinCanny},
		{"MaxCanny", core.MaxCanny, spec.MaxCanny},
		{"MinMaskBlur", core.MinMaskBlur, spec.MinMaskBlur},
		{"MaxMaskBlur", core.MaxMaskBlur, spec.MaxMaskBlur},
		{"MinMaskPadding", core.MinMaskPadding, spec.MinMaskPadding},
		{"MaxMaskPadding", core.MaxMaskPadding, spec.MaxMaskPadding},
		{"MinUpscale", core.MinUpscale, spec.MinUpscale},
		{"MaxUpscale", core.MaxUpscale, spec.MaxUpscale},
		{"MinHires", core.MinHires, spec.MinHires},
		{"MaxHires", core.MaxHires, spec.MaxHires},
		{"MinBatchCount", core.MinBatchCount, spec.MinBatchCount},
		{"MaxBatchCount", core.MaxBatchCount, spec.MaxBatchCount},

		{"DefaultControlScale", core.DefaultControlScale, spec.DefaultControlScale},
		{"DefaultCannyLow", core.DefaultCannyLow, spec.DefaultCannyLow},
		{"DefaultCannyHigh", core.DefaultCannyHigh, spec.DefaultCannyHigh},
		{"DefaultRefinerSwitch", core.DefaultRefinerSwitch, spec.DefaultRefinerSwitch},
		{"DefaultStrength", core.DefaultStrength, spec.DefaultStrength},
		{"DefaultMaskBlur", core.DefaultMaskBlur, spec.DefaultMaskBlur},
		{"DefaultUpscale", core.DefaultUpscale, spec.DefaultUpscale},
		{"DefaultHiresScale", core.DefaultHiresScale, spec.DefaultHiresScale},
		{"DefaultHiresStrength", core.DefaultHiresStrength, spec.DefaultHiresStrength},
		{"DefaultRequest().Scheduler", core.DefaultRequest().Scheduler, spec.DefaultScheduler},

		{"TinyModel", core.TinyModel, spec.TinyModel},
		{"TinyLoRA", core.TinyLoRA, spec.TinyLoRA},
		{"TinyControlNet", core.TinyControlNet, spec.TinyControlNet},
		{"TinyRefiner", core.TinyRefiner, spec.TinyRefiner},
		{"TinyVAE", core.TinyVAE, spec.TinyVAE},
		{"TinyUpscaler", core.TinyUpscaler, spec.TinyUpscaler},
		{"TinySingleFile", core.TinySingleFile, spec.TinySingleFile},
		{"LanczosUpscaler", core.LanczosUpscaler, spec.LanczosUpscaler},
	} {
		// Boxing keeps the kind: an int limit that became a float (or back) differs too.
		assert.Equal(t, c.spec, c.core, "core.%s differs from docs/protocol/spec.json", c.name)
	}
}

func TestCoreListsMatchSpec(t *testing.T) {
	codes := make([]string, len(core.ErrorCodes))
	for i, c := range core.ErrorCodes {
		codes[i] = string(c)
	}
	specCodes := make([]string, len(spec.ErrorCodes))
	for i, c := range spec.ErrorCodes {
		specCodes[i] = string(c)
	}
	assert.Equal(t, specCodes, codes, "core.ErrorCodes")
	assert.Equal(t, spec.GoToWorker, []string{core.MsgGenerate, core.MsgCancel, core.MsgPing, core.MsgUnload, core.MsgShutdown}, "core.Msg* (Go to worker)")
	assert.Equal(t, spec.WorkerToGo, []string{core.MsgLoading, core.MsgHello, core.MsgAccepted, core.MsgProgress,
		core.MsgPreview, core.MsgResult, core.MsgError, core.MsgPong}, "core.Msg* (worker to Go)")
	assert.Equal(t, spec.Stages, core.Stages, "core.Stages")
	assert.Equal(t, spec.DeviceKinds, core.DeviceKinds, "core.DeviceKinds")
	// core lists dpmpp_2m and dpmpp_sde before ddim; the spec keeps the worker's and
	// docs/protocol.md's order (the menu's once a worker said hello). Same names.
	assert.ElementsMatch(t, spec.Schedulers, core.Schedulers, "core.Schedulers")
	assert.Equal(t, spec.SamplerNames, core.SamplerNames, "core.SamplerNames")
	assert.Equal(t, spec.Schedules, core.Schedules, "core.Schedules")
	assert.Equal(t, spec.ScheduleNames, core.ScheduleNames, "core.ScheduleNames")
	assert.Equal(t, spec.ControlNetTypes, core.ControlNetTypes, "core.ControlNetTypes")
}

// TestCoreDecodeDefaultsMatchSpec: what core's decoder fills in for absent fields.
func TestCoreDecodeDefaultsMatchSpec(t *testing.T) {
	line := `{"type":"generate","id":"a","request":{"prompt":"p","model":"tiny","steps":4,"cfg":5,` +
		`"width":64,"height":64,"seed":1,"output_dir":"/tmp/out","loras":[{"path":"tiny-lora"}],` +
		`"controlnets":[{"type":"canny","model":"tiny-controlnet","image":"/tmp/e.png"}]}}`
	m, err := core.DecodeMessage([]byte(line))
	require.NoError(t, err)
	l, c := m.Request.LoRAs[0], m.Request.ControlNets[0]
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
			r := core.DefaultRequest()
			r.Prompt, r.Model = "p", "/models/m"+e
			err := r.Validate()
			refused := false
			if v, ok := core.AsValidation(err); ok {
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

	req := core.DefaultRequest()
	notes := infotext.ParseInfotext(text(
		kv(spec.InfotextDenoisingStrength, "0.6"), kv(spec.InfotextMaskBlur, "3"),
		kv(spec.InfotextInpaintArea, spec.InfotextOnlyMasked), kv(spec.InfotextMaskedAreaPadding, "16"),
		kv(spec.InfotextVAE, spec.TinyVAE), kv(spec.InfotextLoRAHashes, `"tiny-lora: 0123456789"`),
		kv(spec.InfotextLoRAs, `"<lora:tiny-lora:0.8>"`), kv(spec.InfotextControlNet+" 0", `"`+unit+`"`),
		kv(spec.InfotextRefiner, spec.TinyRefiner), kv(spec.InfotextRefinerSwitchAt, "0.7"),
		kv(spec.InfotextPostprocessUpscaler, spec.InfotextLanczos), kv(spec.InfotextPostprocessUpscaleBy, "3"),
	)).ApplyTo(&req)
	want := core.DefaultRequest()
	want.Prompt, want.NegativePrompt, want.Steps, want.Scheduler, want.Schedule = "a lighthouse", "fog", 7, "dpmpp_2m", "karras"
	want.CFG, want.Seed, want.Width, want.Height = 6.5, 42, 64, 128
	want.Strength, want.MaskBlur, want.MaskPadding, want.VAE = 0.6, core.IntPtr(3), 16, spec.TinyVAE
	want.LoRAs = []core.LoRA{{Path: spec.TinyLoRA, Weight: 0.8}}
	want.Refiner, want.RefinerSwitch, want.Upscaler, want.Upscale = spec.TinyRefiner, 0.7, spec.LanczosUpscaler, 3
	assert.Equal(t, want, req)
	require.Len(t, notes, 1, "only the ControlNet's image cannot come back")
	assert.Contains(t, notes[0], "ControlNet 0 (canny, "+spec.TinyControlNet+")")

	for _, hires := range []string{kv(spec.InfotextHiresUpscale, "2"), kv(spec.InfotextHiresResize, "128x256")} {
		req = core.DefaultRequest()
		notes = infotext.ParseInfotext(text(kv(spec.InfotextDenoisingStrength, "0.4"), hires,
			kv(spec.InfotextHiresSteps, "12"), kv(spec.InfotextHiresUpscaler, spec.InfotextLanczos))).ApplyTo(&req)
		assert.Empty(t, notes, hires)
		assert.Equal(t, []any{2.0, 12, 0.4, 0.0}, []any{req.HiresScale, req.HiresSteps, req.HiresStrength, req.Strength}, hires)
	}
}

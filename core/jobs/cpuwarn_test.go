package jobs

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
)

func sdxlRequest(w, h, batch int) request.Request {
	r := request.DefaultRequest()
	r.Model, r.Width, r.Height, r.BatchSize, r.Steps = "/models/sdxl-base", w, h, batch, 30
	return r
}

func TestEstimateCPUStepByTheRule(t *testing.T) {
	// 1024 × 1024 on 2 cores: 1048576 px / (2 × CPUPixelsPerCoreS px/s) a step.
	e, ok := EstimateCPUStep(sdxlRequest(1024, 1024, 1), store.Rate{}, 2)
	require.True(t, ok)
	step := 1024 * 1024 / (2 * CPUPixelsPerCoreS)
	assert.Equal(t, step, int(e.Step.Seconds()))
	assert.InDelta(t, 30*e.Step.Seconds(), e.Total.Seconds(), 0.01)
	assert.GreaterOrEqual(t, e.Step, SlowCPUStep)
	assert.Equal(t, "1024 × 1024 on the CPU takes about 3 minutes a step, 87 minutes for the whole job; "+
		"use a GPU or a smaller size (estimated for an SDXL model on 2 CPU cores)", e.Text())

	// A batch multiplies a step; 512 × 512 on 8 cores is quick enough.
	e, _ = EstimateCPUStep(sdxlRequest(1024, 1024, 4), store.Rate{}, 16)
	assert.Equal(t, 4, e.Batch)
	assert.Contains(t, e.Text(), "1024 × 1024 (a batch of 4) on the CPU")
	e, _ = EstimateCPUStep(sdxlRequest(512, 512, 1), store.Rate{}, 8)
	assert.Less(t, e.Step, SlowCPUStep)

	// The hires pass's enlarged image, drawn alone, is the larger step here.
	r := sdxlRequest(1024, 1024, 1)
	r.HiresScale = 2
	e, _ = EstimateCPUStep(r, store.Rate{}, 8)
	assert.Equal(t, [3]int{2048, 2048, 1}, [3]int{e.Width, e.Height, e.Batch})

	// The rule is for SDXL: the tiny model, and an enlargement alone, get none.
	tiny := sdxlRequest(4096, 4096, 8)
	tiny.Model = request.TinyModel
	_, ok = EstimateCPUStep(tiny, store.Rate{}, 1)
	assert.False(t, ok)
	up := sdxlRequest(4096, 4096, 1)
	up.UpscaleOnly = true
	_, ok = EstimateCPUStep(up, store.Rate{PixelStepsPerS: 1, Samples: 1}, 1)
	assert.False(t, ok)
}

func TestEstimateCPUStepFromAMeasuredRate(t *testing.T) {
	rate := store.Rate{PixelStepsPerS: 64 * 64 * 4 / 2.0, Samples: 3} // 4 steps of 64 × 64 in 2 s
	r := sdxlRequest(64, 64, 1)
	r.Model, r.Steps = request.TinyModel, 4
	e, ok := EstimateCPUStep(r, rate, 8)
	require.True(t, ok)
	assert.Equal(t, 500*time.Millisecond, e.Step)
	r.Width, r.Height, r.BatchSize = 1024, 1024, 2
	e, _ = EstimateCPUStep(r, rate, 8)
	assert.Equal(t, 256*time.Second, e.Step, "512 times the pixels of a measured step")
	assert.Contains(t, e.Text(), "about 4 minutes a step, 17 minutes for the whole job; use a GPU or a smaller size "+
		"(measured in 3 earlier jobs of this model on the CPU)")
}

func TestSlowCPUWarningUsesTheModelsOwnSpeedOnTheCPU(t *testing.T) {
	r, s, _ := newTestRunner(t, &scriptedGen{})
	ctx := context.Background()
	record := func(model, device string, denoiseS float64) {
		req := tinyRequest()
		req.Model, req.Width, req.Height, req.Steps, req.BatchSize = model, 64, 64, 4, 1
		id, err := s.CreateJob(ctx, store.NewJobUID(time.Now()), req)
		require.NoError(t, err)
		require.NoError(t, s.FinishJob(ctx, id, &protocol.Metrics{TotalS: denoiseS + 1, DenoiseS: denoiseS, ItS: 1, Device: device, Dtype: "float32"},
			[]protocol.ImageResult{{Path: "/img/" + model + device + ".png", Seed: 1, Width: 64, Height: 64}}))
	}
	small := tinyRequest()
	small.Width, small.Height, small.Steps, small.BatchSize = 64, 64, 4, 1

	t.Setenv(DeviceEnv, "cpu")
	assert.Empty(t, r.SlowCPUWarning(ctx, small), "no measurement and the tiny model: nothing to warn of")
	record(request.TinyModel, "cpu", 0.05)
	assert.Empty(t, r.SlowCPUWarning(ctx, small), "the tiny model's test sizes are fast")

	// A slow measurement of the same model on the CPU warns even at 64 × 64;
	// the same speed on a GPU or of another model does not count.
	record("/models/other", "cpu", 4096*4/2) // 2 px-steps/s
	record(request.TinyModel, "cuda", 4096*4/2)
	assert.Empty(t, r.SlowCPUWarning(ctx, small))
	record(request.TinyModel, "cpu", 4096*4/2)
	w := r.SlowCPUWarning(ctx, small)
	assert.Contains(t, w, "64 × 64 on the CPU takes about")
	assert.Contains(t, w, "(measured in 2 earlier jobs of this model on the CPU)")

	// Not on the CPU: no warning.
	t.Setenv(DeviceEnv, "cuda:1")
	assert.Equal(t, "cuda", r.ExpectedDevice(ctx))
	assert.Empty(t, r.SlowCPUWarning(ctx, small))

	// Without the variable, the last done job's device tells.
	t.Setenv(DeviceEnv, "")
	assert.Equal(t, "cpu", r.ExpectedDevice(ctx), "the newest done job ran on the CPU")
}

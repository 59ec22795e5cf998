//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBenchStats(t *testing.T) {
	s := stats([]float64{3, 1, 2})
	assert.Equal(t, benchStats{MedianS: 2, P90S: 3, MinS: 1, N: 3}, s)
	s = stats([]float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10})
	assert.Equal(t, 5.5, s.MedianS)
	assert.Equal(t, 9.0, s.P90S, "nearest rank, as the Python half computes it")
	assert.Equal(t, benchStats{}, stats(nil))
}

func TestBenchRefusesBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--variants", "warp-speed"},
		{"--batches", "0"},
		{"--variants", "mine:NOEQUALS"},
		{"--runs", "0"},
		{"--workers", "-1"},
		{"--workers", "2", "--workers-jobs", "-3"},
		{"stray"},
	} {
		var out, errOut bytes.Buffer
		assert.Equal(t, exitUsage, run(append([]string{"bench"}, args...), &out, &errOut), args)
		assert.Contains(t, errOut.String(), "atelier bench:", args)
	}
	var out, errOut bytes.Buffer
	assert.Equal(t, exitOK, run([]string{"bench", "--help"}, &out, &errOut))
	assert.Contains(t, out.String(), "Usage: atelier bench")
}

// TestBenchOnTheTinyModel runs the whole bench on the CPU with 2 steps: the
// baseline, one worker variant through the bridge, previews, a second batch
// size, a restart and the scale-out (4 jobs on one worker, then on two CPU
// workers). It checks that the report is well formed, never speed.
func TestBenchOnTheTinyModel(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	report := filepath.Join(t.TempDir(), "bench.json")
	stdout, stderr, code := h.run("bench", "--model", "tiny", "--steps", "2", "--width", "64", "--height", "64",
		"--runs", "2", "--warmup", "1", "--batches", "1,2", "--preview-every", "1", "--json", report,
		"--workers", "2", "--workers-jobs", "4")
	require.Equal(t, exitOK, code, "stderr:\n%s\nstdout:\n%s", stderr, stdout)

	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	require.GreaterOrEqual(t, len(lines), 5, stdout)
	assert.Contains(t, lines[0], "atelier bench: bench-sdxl-tiny-v1, 64x64, 2 steps, cfg 5")
	assert.Regexp(t, `^\s*variant\s+median s\s+p90 s\s+speedup`, lines[1])
	assert.Regexp(t, `^\s*diffusers \(baseline\)\s+\d+\.\d{3}`, lines[2])
	assert.Regexp(t, `^\s*atelier\s+\d+\.\d{3}\s+\d+\.\d{3}\s+\d+\.\d{2}`, lines[3])

	var rep benchReport
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &rep), lines[len(lines)-1])
	written, err := os.ReadFile(report)
	require.NoError(t, err)
	assert.JSONEq(t, lines[len(lines)-1], strings.TrimSpace(string(written)))

	assert.Equal(t, 2, rep.Steps)
	assert.NotEmpty(t, rep.Baseline)
	assert.Empty(t, rep.BaselineError)
	assert.Greater(t, rep.TFLOPPerStep, 0.0)
	assert.Greater(t, rep.ProgressLineUS, 0.0)
	require.Len(t, rep.Variants, 1)
	v := rep.Variants[0]
	assert.Equal(t, "atelier", v.Name)
	assert.Empty(t, v.Error)
	assert.True(t, v.PNGOK, "the image is a PNG with a parameters chunk")
	assert.Equal(t, 2, v.E2E.N)
	assert.Greater(t, v.E2E.MedianS, 0.0)
	assert.GreaterOrEqual(t, v.E2E.P90S, v.E2E.MedianS)
	assert.Greater(t, v.RatioToBaseline, 0.0)
	assert.Greater(t, v.FirstImageColdS, 0.0)
	assert.Greater(t, v.FirstImageWarmS, 0.0)
	assert.Greater(t, v.FirstImageSwitchS, 0.0)
	assert.Contains(t, v.FirstSwitchMarks, "loading_model", "the switch loads the other folder")
	assert.Greater(t, v.DenoiseS, 0.0)
	assert.Greater(t, v.DecodeS, 0.0)
	assert.GreaterOrEqual(t, v.BridgeOverheadS, 0.0)
	assert.NotNil(t, v.PreviewE2E)
	assert.Contains(t, v.Batches, "2")
	assert.Contains(t, v.FirstImageMarks, "accepted")

	sc := rep.ScaleOut
	require.NotNil(t, sc, "--workers adds the scale-out")
	assert.Empty(t, sc.Error)
	assert.Equal(t, 2, sc.Workers)
	assert.Equal(t, 4, sc.Jobs)
	assert.Equal(t, "atelier", sc.Variant)
	require.Len(t, sc.Slots, 2)
	for _, d := range sc.Slots {
		assert.Equal(t, "cpu", d.Device, "no GPU here: CPU workers")
	}
	for _, r := range []*benchScaleRun{sc.One, sc.Many} {
		require.NotNil(t, r)
		assert.Equal(t, 4, r.Images, "every job made its one image")
		sum := 0
		for _, n := range r.JobsBySlot {
			sum += n
		}
		assert.Equal(t, 4, sum, "every job ran once: %v", r.JobsBySlot)
		assert.LessOrEqual(t, len(r.JobsBySlot), r.Workers)
		assert.Greater(t, r.WallS, 0.0)
		assert.Greater(t, r.WarmupS, 0.0)
		assert.InEpsilon(t, float64(r.Images)/r.WallS, r.ImagesPerSec, 0.01, "images per second is images over the wall time")
	}
	assert.Equal(t, 1, sc.One.Workers)
	assert.Equal(t, 2, sc.Many.Workers)
	assert.Greater(t, sc.Speedup, 0.0)
	assert.InDelta(t, sc.Speedup/2, sc.Efficiency, 1e-3)
	assert.Contains(t, stdout, "scale-out (atelier, 4 jobs of 1 image): 1 worker ")
	// The fast path is CUDA's: on the CPU every job reports it off, and the first images
	// without and with an artefact are the cold start and the restart.
	assert.Equal(t, v.FirstImageColdS, v.FirstNoArtefactS)
	assert.Equal(t, v.FirstImageWarmS, v.FirstWithArtefactS)
	assert.Greater(t, v.FirstWithArtefactS, 0.0)
	for _, st := range []string{v.FastPathFirst, v.FastPathTimed, v.FastPathSwitch, v.FastPathRestart} {
		assert.Equal(t, "off", st)
	}
	assert.Zero(t, v.FastPathReadyS, "nothing was built, so nothing was waited for")
	assert.Nil(t, v.WhileBuildingE2E)
}

// TestBenchReportsFP8sErrorOrWhyNot: a variant with ATELIER_FP8=1 gets FP8's error
// against float16 on one seed; on this CPU the report and the table say why there is none.
func TestBenchReportsFP8sErrorOrWhyNot(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	stdout, stderr, code := h.run("bench", "--model", "tiny", "--steps", "1", "--width", "64", "--height", "64",
		"--runs", "1", "--warmup", "1", "--batches", "1", "--baseline=false", "--restart=false",
		"--variants", "fp8:ATELIER_FP8=1")
	require.Equal(t, exitOK, code, "stderr:\n%s\nstdout:\n%s", stderr, stdout)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	var rep benchReport
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &rep))
	require.Len(t, rep.Variants, 1)
	f := rep.Variants[0].FP8Error
	require.NotNil(t, f, "an FP8 variant gets the check")
	assert.Equal(t, "FP8 needs a CUDA GPU", f.Skipped)
	assert.Zero(t, f.LatentsRelErr)
	assert.Contains(t, stdout, "fp8: FP8's error not measured: FP8 needs a CUDA GPU")
}

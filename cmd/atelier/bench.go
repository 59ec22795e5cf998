package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"atelier/bridge"
	"atelier/core/media"
	"atelier/core/paths"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/settings"
	"atelier/core/store"
)

// fullStepTFLOP is the compute of one SDXL UNet call with classifier-free
// guidance (batch 2) at 1024x1024, counted with torch.utils.flop_counter.
const fullStepTFLOP = 13.52

// benchVariants are the worker settings `atelier bench --variants` knows by
// name; each runs in a worker of its own, with a compile cache of its own.
var benchVariants = map[string][]string{
	"atelier":   nil, // the worker's defaults
	"eager":     {"ATELIER_COMPILE=off"},
	"legacy":    {"ATELIER_COMPILE=off", "ATELIER_FUSE_QKV=0", "ATELIER_VAE_DTYPE=float32", "ATELIER_CUDNN_BENCHMARK=0", "ATELIER_INFERENCE_MODE=0"},
	"legacy-im": {"ATELIER_COMPILE=off", "ATELIER_FUSE_QKV=0", "ATELIER_VAE_DTYPE=float32", "ATELIER_CUDNN_BENCHMARK=0"},
	"fast":      {"ATELIER_COMPILE=full", "ATELIER_COMPILE_MODE=reduce-overhead", "ATELIER_COMPILE_VAE=1", "ATELIER_COMPILE_TEXT=1"},
	"fp8":       {"ATELIER_FP8=1"}, // torchao's float8 on the default fast path, an artefact of its own
	"regional":  {"ATELIER_COMPILE=regional"},
	"full":      {"ATELIER_COMPILE=full"},
	"full-cl":   {"ATELIER_COMPILE=full", "ATELIER_CHANNELS_LAST=1"},
	"full-cg":   {"ATELIER_COMPILE=full", "ATELIER_COMPILE_MODE=reduce-overhead"},
	"full-vae":  {"ATELIER_COMPILE=full", "ATELIER_COMPILE_VAE=1"},
	"cudnn":     {"ATELIER_SDPA=cudnn"},
	"offload":   {"ATELIER_COMPILE=off", "ATELIER_OFFLOAD=model"},
	"tiling":    {"ATELIER_COMPILE=off", "ATELIER_VAE_TILING=1", "ATELIER_VAE_SLICING=1"},
}

type benchVariant struct {
	Name string   `json:"name"`
	Env  []string `json:"env"`
}

type benchOptions struct {
	model        string
	steps        int
	cfg          float64
	width        int
	height       int
	runs         int
	warmup       int
	batches      []int
	batchFor     map[string]bool // nil: every variant
	previewEvery int
	variants     []benchVariant
	baseline     bool
	restart      bool
	switchModel  bool
	jsonPath     string
	timeout      time.Duration
	workers      int // --workers: also time the queue on this many workers against one (0: not)
	workerJobs   int
	fastWait     time.Duration
	fastDir      string
}

func parseBench(args []string, stdout, stderr io.Writer) (*benchOptions, int, bool) {
	o := &benchOptions{}
	var batches, variants, batchVariants string
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.StringVar(&o.model, "model", "full", `"full" (the SDXL architecture with random weights, created once in the cache), "tiny", or a diffusers model folder`)
	fs.IntVar(&o.steps, "steps", 30, "denoising steps")
	fs.Float64Var(&o.cfg, "cfg", 5, "guidance scale")
	fs.IntVar(&o.width, "width", 1024, "width in pixels")
	fs.IntVar(&o.height, "height", 1024, "height in pixels")
	fs.IntVar(&o.runs, "runs", 5, "counted runs per measurement (after the warm-ups)")
	fs.IntVar(&o.warmup, "warmup", 2, "warm-up runs, not counted (the first includes any compiling)")
	fs.StringVar(&batches, "batches", "1,2,4", "batch sizes to report as images per second")
	fs.StringVar(&batchVariants, "batch-variants", "", "time the other batch sizes only for these variants (comma separated; empty: all); a compiled variant recompiles for each")
	fs.IntVar(&o.previewEvery, "preview-every", 5, "also time jobs with a preview every N steps (0: no preview runs)")
	fs.StringVar(&variants, "variants", "atelier", "worker settings to time, comma separated: "+strings.Join(sortedKeys(benchVariants), ", ")+
		`; or NAME:VAR=VALUE+VAR=VALUE for settings of your own`)
	fs.BoolVar(&o.baseline, "baseline", true, "time plain diffusers too, as the baseline")
	fs.BoolVar(&o.restart, "restart", true, "restart each variant's worker to time the first image with a warm compile cache")
	fs.BoolVar(&o.switchModel, "switch", true, "time the first image after a switch to another model of the same architecture (the model's files linked into a second folder)")
	fs.StringVar(&o.jsonPath, "json", "", "also write the JSON report to this file")
	fs.DurationVar(&o.timeout, "job-timeout", 15*time.Minute, "give up on one job after this long")
	fs.IntVar(&o.workers, "workers", 0, "also time the queue's images per second on one worker and on N, planned as `queue run --workers N` plans them "+
		"(one per GPU, or N CPU workers), with the first variant's settings (0: not)")
	fs.IntVar(&o.workerJobs, "workers-jobs", 0, "jobs of one image (a batch count) each scale-out run times (default: 4 per worker)")
	fs.StringVar(&o.fastDir, "fast-dir", "", "keep the fast path's artefacts in this folder across variants and runs (default: an empty folder for each variant, so the first image has none)")
	fs.DurationVar(&o.fastWait, "fast-wait", 15*time.Minute, "while the fast path's artefact is built in the background (CUDA), keep running jobs for at most this long before the timed runs")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: atelier bench [options]

Times image generation on this machine: plain diffusers as the baseline, then
Atelier's own path end to end (bridge request, worker, PNG with metadata on
disk) for each variant of the worker's settings. With --workers N it also
times the queue: the same jobs on one worker, then on N (one per GPU, or N CPU
workers), as images per second and their ratio. Prints a table, then the
whole report as one JSON line. Nothing is recorded in the history.

Options:
`)
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return nil, code, false
	}
	bad := func(format string, a ...any) (*benchOptions, int, bool) {
		fmt.Fprintf(stderr, "atelier bench: "+format+"\n", a...)
		return nil, exitUsage, false
	}
	if fs.NArg() > 0 {
		return bad("unexpected argument %q", fs.Arg(0))
	}
	if o.steps < 1 || o.runs < 1 || o.warmup < 1 {
		return bad("--steps, --runs and --warmup must be at least 1")
	}
	if o.workers < 0 || o.workers > bridge.MaxWorkers {
		return bad("--workers: give 1 to %d (or 0: no scale-out run)", bridge.MaxWorkers)
	}
	if o.workerJobs == 0 {
		o.workerJobs = 4 * o.workers
	}
	if o.workerJobs < 0 || o.workerJobs > request.MaxBatchCount {
		return bad("--workers-jobs: give 1 to %d", request.MaxBatchCount)
	}
	for _, s := range strings.Split(batches, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		b, err := strconv.Atoi(s)
		if err != nil || b < request.MinBatch || b > request.MaxBatch {
			return bad("--batches: %q is not a batch size from %d to %d", s, request.MinBatch, request.MaxBatch)
		}
		o.batches = append(o.batches, b)
	}
	for _, s := range strings.Split(variants, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		name, custom, isCustom := strings.Cut(s, ":")
		if isCustom {
			var env []string
			for _, kv := range strings.Split(custom, "+") {
				if !strings.Contains(kv, "=") {
					return bad("--variants: %q is not VAR=VALUE", kv)
				}
				env = append(env, kv)
			}
			o.variants = append(o.variants, benchVariant{Name: name, Env: env})
			continue
		}
		env, ok := benchVariants[name]
		if !ok {
			return bad("--variants: unknown variant %q (known: %s)", name, strings.Join(sortedKeys(benchVariants), ", "))
		}
		o.variants = append(o.variants, benchVariant{Name: name, Env: env})
	}
	if batchVariants != "" {
		o.batchFor = map[string]bool{}
		for _, n := range strings.Split(batchVariants, ",") {
			o.batchFor[strings.TrimSpace(n)] = true
		}
	}
	return o, exitOK, true
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Report types: the JSON that `atelier bench` prints and writes.

type benchStats struct {
	MedianS float64 `json:"median_s"`
	P90S    float64 `json:"p90_s"`
	MinS    float64 `json:"min_s"`
	N       int     `json:"n"`
}

func stats(xs []float64) benchStats {
	if len(xs) == 0 {
		return benchStats{}
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	// Nearest rank, as the Python half computes it.
	k := int(math.Ceil(0.9*float64(len(s))-1e-9)) - 1
	k = max(0, min(len(s)-1, k))
	return benchStats{MedianS: round4(med), P90S: round4(s[k]), MinS: round4(s[0]), N: len(s)}
}

func round4(x float64) float64 { return float64(int64(x*1e4+0.5)) / 1e4 }

type benchBatch struct {
	MedianS      float64 `json:"median_s"`
	ImagesPerSec float64 `json:"images_per_s"`
}

type benchResult struct {
	Name              string   `json:"name"`
	Env               []string `json:"env"`
	Error             string   `json:"error,omitempty"`
	FirstImageColdS   float64  `json:"first_image_cold_s"`
	FirstImageWarmS   float64  `json:"first_image_warm_cache_s,omitempty"`
	FirstImageSwitchS float64  `json:"first_image_after_switch_s,omitempty"`
	// The same first images by the fast path's artefact: none yet (a fresh cache), one
	// on disk (after a restart, once it was built), and another checkpoint of the same
	// architecture (the artefact takes the new weights).
	FirstNoArtefactS   float64 `json:"first_image_no_artefact_s"`
	FirstWithArtefactS float64 `json:"first_image_with_artefact_s,omitempty"`
	// The fast path's state in each kind of job (metrics.speed.fast_path: on, building,
	// off): the first, the timed ones, after the switch and after the restart.
	FastPathFirst   string `json:"fast_path_first"`
	FastPathTimed   string `json:"fast_path_timed"`
	FastPathSwitch  string `json:"fast_path_after_switch,omitempty"`
	FastPathRestart string `json:"fast_path_after_restart,omitempty"`
	// Why the fast path was off, where the worker said (metrics.speed.fast_path_note):
	// no room on the GPU for its build, a build out of memory, a failed build.
	FastPathNote string `json:"fast_path_note,omitempty"`
	// While the artefact was built: how long until a job used it (from the end of the
	// first job), that job's own time (it loads the artefact), and the jobs in between.
	FastPathReadyS    float64               `json:"fast_path_ready_s,omitempty"`
	FastPathLoadJobS  float64               `json:"fast_path_first_fast_job_s,omitempty"`
	WhileBuildingE2E  *benchStats           `json:"while_building_e2e,omitempty"`
	E2E               benchStats            `json:"e2e"`
	RatioToBaseline   float64               `json:"speedup_vs_baseline,omitempty"`
	WorkerTotal       benchStats            `json:"worker_total"`
	BridgeOverheadS   float64               `json:"bridge_overhead_s"`
	BridgeOverheadPct float64               `json:"bridge_overhead_pct"`
	EncodeS           float64               `json:"encode_s"`
	DenoiseS          float64               `json:"denoise_s"`
	StepMS            float64               `json:"step_ms"`
	TFLOPs            float64               `json:"tflop_per_s,omitempty"`
	DecodeS           float64               `json:"vae_decode_s"`
	SaveS             float64               `json:"save_png_s"`
	PeakMemBytes      int64                 `json:"peak_mem_bytes"`
	PreviewEvery      int                   `json:"preview_every,omitempty"`
	PreviewE2E        *benchStats           `json:"preview_e2e,omitempty"`
	PreviewCostPct    float64               `json:"preview_cost_pct,omitempty"`
	ProgressCostPct   float64               `json:"progress_cost_pct"`
	Batches           map[string]benchBatch `json:"batches,omitempty"`
	PNGOK             bool                  `json:"png_ok"`
	FirstImageMarks   map[string]float64    `json:"first_image_cold_marks,omitempty"`
	FirstWarmMarks    map[string]float64    `json:"first_image_warm_marks,omitempty"`
	FirstSwitchMarks  map[string]float64    `json:"first_image_after_switch_marks,omitempty"`
	WarmRestartLog    []string              `json:"warm_restart_worker_log,omitempty"`
	// FP8Error: with ATELIER_FP8=1, how far FP8 moves one image from the float16
	// one on the same seed (latents and pixels), or why it could not run.
	FP8Error *benchFP8 `json:"fp8_error,omitempty"`
}

// benchFP8 is `atelier_worker.bench fp8check`'s answer.
type benchFP8 struct {
	Skipped       string  `json:"skipped,omitempty"`
	Error         string  `json:"error,omitempty"`
	Seed          int     `json:"seed,omitempty"`
	Linears       int     `json:"fp8_linears,omitempty"`
	LatentsRelErr float64 `json:"latents_rel_err,omitempty"`
	PixelsRelErr  float64 `json:"pixels_rel_err,omitempty"`
	PixelsMaxAbs  int     `json:"pixels_max_abs,omitempty"`
	PixelsMeanAbs float64 `json:"pixels_mean_abs,omitempty"`
	PSNR          float64 `json:"psnr_db,omitempty"`
	Finite        bool    `json:"finite,omitempty"`
}

type benchReport struct {
	Command        string          `json:"command"`
	Started        string          `json:"started"`
	Model          string          `json:"model"`
	Steps          int             `json:"steps"`
	CFG            float64         `json:"cfg"`
	Width          int             `json:"width"`
	Height         int             `json:"height"`
	Runs           int             `json:"runs"`
	Warmup         int             `json:"warmup"`
	Hello          json.RawMessage `json:"worker_hello,omitempty"`
	TFLOPPerStep   float64         `json:"tflop_per_cfg_step,omitempty"`
	Baseline       json.RawMessage `json:"baseline,omitempty"`
	BaselineError  string          `json:"baseline_error,omitempty"`
	ProgressLineUS float64         `json:"progress_line_us,omitempty"`
	Variants       []*benchResult  `json:"variants"`
	ScaleOut       *benchScale     `json:"scale_out,omitempty"` // with --workers N
}

func cmdBench(args []string, stdout, stderr io.Writer) int {
	o, code, ok := parseBench(args, stdout, stderr)
	if !ok {
		return code
	}
	dirs := paths.DefaultPaths()
	if err := dirs.EnsureDirs(); err != nil {
		fmt.Fprintln(stderr, "atelier bench:", err)
		return exitFailure
	}
	cache := os.Getenv("ATELIER_CACHE_DIR")
	if cache == "" {
		cache = dirs.Cache
	}
	cfg := bridge.Config{CacheDir: cache, Logger: newLogger(stderr)}
	// A bench measures speed, so it shares its devices with no other worker:
	// it holds their leases for its duration, and refuses while another
	// Atelier process holds one (docs/architecture.md, "One worker per device").
	history, err := store.OpenStore(dirs.DB)
	if err != nil {
		fmt.Fprintln(stderr, "atelier bench:", err)
		return exitFailure
	}
	defer history.Close()
	if other, err := takeLeases(context.Background(), history, benchDevices(o)); err != nil {
		fmt.Fprintln(stderr, "atelier bench:", err)
		return exitFailure
	} else if other != nil {
		fmt.Fprintf(stderr, "atelier bench: %s, and a bench beside its worker would time both; stop it (or let it finish), then run the bench again\n",
			heldByOther(*other))
		return exitFailure
	}
	defer releaseLeases(history) // after every worker of the bench has stopped
	argv, workerDir, err := cfg.WorkerCommand()
	if err != nil {
		fmt.Fprintln(stderr, "atelier bench:", err)
		return exitFailure
	}
	py := &benchPython{python: argv[0], workerDir: workerDir, cache: cache, stderr: stderr}
	rep := &benchReport{Command: "atelier bench " + strings.Join(args, " "), Started: time.Now().UTC().Format(time.RFC3339),
		Steps: o.steps, CFG: o.cfg, Width: o.width, Height: o.height, Runs: o.runs, Warmup: o.warmup}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "bench: "+format+"\n", a...) }

	// The model: the full SDXL sizes with random weights, created once.
	model := o.model
	if model == "full" || model == "tiny" {
		dtype := map[string]string{"full": "float16", "tiny": "float32"}[model]
		dir := filepath.Join(cache, "models", "bench-sdxl-"+model+"-v1")
		logf("creating the %s model at %s (once)", model, dir)
		var made struct {
			Model   string  `json:"model"`
			CreateS float64 `json:"create_s"`
		}
		if err := py.run(&made, "model", "--out", dir, "--preset", model, "--dtype", dtype); err != nil {
			fmt.Fprintln(stderr, "atelier bench: creating the model:", err)
			return exitFailure
		}
		model = made.Model
	}
	rep.Model = model

	var base struct {
		E2E          benchStats `json:"e2e"`
		UnetTFLOP    float64    `json:"unet_tflop_per_cfg_step"`
		UnetStep     benchStats `json:"unet_step_cfg"`
		VAEDecode    benchStats `json:"vae_decode"`
		PeakMemBytes int64      `json:"peak_mem_bytes"`
		Versions     struct {
			GPU string `json:"gpu"`
		} `json:"versions"`
	}
	if o.baseline {
		logf("timing plain diffusers (the baseline)")
		var raw json.RawMessage
		err := py.run(&raw, append(o.imageArgs("baseline", model), "--runs", strconv.Itoa(o.runs),
			"--warmup", strconv.Itoa(o.warmup), "--batches", joinInts(o.batches))...)
		if err != nil {
			rep.BaselineError = err.Error()
			logf("baseline failed: %v", err)
		} else {
			rep.Baseline = raw
			_ = json.Unmarshal(raw, &base)
			rep.TFLOPPerStep = base.UnetTFLOP
		}
	}
	if rep.TFLOPPerStep == 0 && o.model == "full" && o.width == 1024 && o.height == 1024 {
		rep.TFLOPPerStep = fullStepTFLOP
	}
	var emit struct {
		US float64 `json:"progress_line_us"`
	}
	if err := py.run(&emit, "emitcost"); err == nil {
		rep.ProgressLineUS = emit.US
	}

	for _, v := range o.variants {
		logf("variant %s %v", v.Name, v.Env)
		res := benchOne(o, v, model, cfg, rep, logf)
		if slices.Contains(v.Env, "ATELIER_FP8=1") {
			// After the variant's worker has gone: both images on a GPU of their own.
			res.FP8Error = benchFP8Check(py, o, model, logf)
		}
		if base.E2E.MedianS > 0 && res.E2E.MedianS > 0 {
			res.RatioToBaseline = round4(base.E2E.MedianS / res.E2E.MedianS)
		}
		rep.Variants = append(rep.Variants, res)
	}

	if o.workers > 0 {
		v := benchVariant{Name: "atelier", Env: []string{}}
		if len(o.variants) > 0 {
			v = o.variants[0]
		}
		rep.ScaleOut = benchWorkers(o, v, model, cfg, logf)
	}

	printBenchTable(stdout, rep, base.E2E, base.UnetStep.MedianS, base.VAEDecode.MedianS, base.PeakMemBytes, rawBatches(rep.Baseline))
	printBenchScale(stdout, rep.ScaleOut)
	b, _ := json.Marshal(rep)
	fmt.Fprintln(stdout, string(b))
	if o.jsonPath != "" {
		if err := os.WriteFile(o.jsonPath, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(stderr, "atelier bench:", err)
			return exitFailure
		}
	}
	for _, r := range rep.Variants {
		if r.Error != "" {
			return exitFailure
		}
	}
	if rep.ScaleOut != nil && rep.ScaleOut.Error != "" {
		return exitFailure
	}
	return exitOK
}

// benchFP8Check has FP8's error against float16 measured on one seed, with the
// bench's size, steps and CFG.
func benchFP8Check(py *benchPython, o *benchOptions, model string, logf func(string, ...any)) *benchFP8 {
	logf("FP8 against float16 on one seed (latents, pixels)")
	var r benchFP8
	if err := py.run(&r, o.imageArgs("fp8check", model)...); err != nil {
		return &benchFP8{Error: err.Error()}
	}
	return &r
}

// imageArgs are the Python half's command and the image it makes: the
// bench's model, steps, CFG and size.
func (o *benchOptions) imageArgs(cmd, model string) []string {
	return []string{cmd, "--model", model, "--steps", strconv.Itoa(o.steps),
		"--cfg", strconv.FormatFloat(o.cfg, 'g', -1, 64), "--width", strconv.Itoa(o.width),
		"--height", strconv.Itoa(o.height)}
}

// benchDevices are the leases of the devices the bench runs on: the device
// of its single worker (and of plain diffusers), and with --workers each of
// the scale-out's slots.
func benchDevices(o *benchOptions) []string {
	ctx := context.Background()
	asked := os.Getenv(settings.EnvDevice)
	devices := []string{appDevice(ctx, asked)}
	if o.workers > 0 {
		if many, err := bridge.LocalSlots(o.workers, bridge.DetectGPUs(ctx), bridge.Config{}); err == nil {
			for _, s := range many {
				if d := leaseName(s.Device, asked); !slices.Contains(devices, d) {
					devices = append(devices, d)
				}
			}
		}
	}
	return devices
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

func rawBatches(raw json.RawMessage) map[string]benchBatch {
	var b struct {
		Batches map[string]benchBatch `json:"batches"`
	}
	_ = json.Unmarshal(raw, &b)
	return b.Batches
}

// benchPython runs the Python half (python -m atelier_worker.bench).
type benchPython struct {
	python, workerDir, cache string
	stderr                   io.Writer
}

func (p *benchPython) run(out any, args ...string) error {
	cmd := exec.Command(p.python, append([]string{"-m", "atelier_worker.bench"}, args...)...)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+p.workerDir, "PYTHONUNBUFFERED=1", "HF_HUB_OFFLINE=1",
		"ATELIER_CACHE_DIR="+p.cache)
	var so bytes.Buffer
	var se tailBuffer
	cmd.Stdout = &so
	cmd.Stderr = &se
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v\n%s", "atelier_worker.bench", args[0], err, se.String())
	}
	lines := strings.Split(strings.TrimSpace(so.String()), "\n")
	last := lines[len(lines)-1]
	if err := json.Unmarshal([]byte(last), out); err != nil {
		return fmt.Errorf("atelier_worker.bench %s printed no JSON (%v): %q", args[0], err, last)
	}
	return nil
}

// tailBuffer keeps the last 4 KiB written to it.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }

// benchJob is what one job through the bridge measured.
type benchJob struct {
	wall     float64
	metrics  *protocol.Metrics
	encodeS  float64
	decodeS  float64
	saveS    float64
	previews int
	images   []protocol.ImageResult
	pngOK    bool
	// Seconds from Submit until the first message of each kind (loading, accepted) and
	// until each stage began, by the worker's clock from accepted: where a first image's
	// time goes.
	marks map[string]float64
}

type benchSession struct {
	br      *bridge.Bridge
	o       *benchOptions
	model   string
	outDir  string
	seq     int
	timeout time.Duration
}

func (s *benchSession) job(batch, previewEvery int) (*benchJob, error) {
	return s.jobOn(s.model, batch, previewEvery)
}

func (s *benchSession) jobOn(model string, batch, previewEvery int) (*benchJob, error) {
	s.seq++
	id := fmt.Sprintf("bench-%d-%d", time.Now().UnixNano()%1e9, s.seq)
	req := request.Request{Prompt: "a lighthouse at dusk, oil painting", NegativePrompt: "fog, blur", Model: model,
		Scheduler: "euler", Steps: s.o.steps, CFG: s.o.cfg, Width: s.o.width, Height: s.o.height,
		Seed: int64(1000 + s.seq), BatchSize: batch, OutputDir: s.outDir, PreviewEvery: previewEvery}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	t0 := time.Now()
	ch, err := s.br.Submit(ctx, id, req)
	if err != nil {
		return nil, err
	}
	j := &benchJob{marks: map[string]float64{}}
	var final protocol.Message // a Result or an Error
	decStart := map[int]float64{}
	saveStart := map[int]float64{}
	var encStart, denStart, saveEnd float64
	var acceptedAt float64
	for msg := range ch {
		now := time.Since(t0).Seconds()
		switch msg.(type) {
		case protocol.Loading:
			if _, ok := j.marks["worker_loading"]; !ok {
				j.marks["worker_loading"] = round4(now)
			}
		case protocol.Accepted:
			acceptedAt = now
			j.marks["accepted"] = round4(now)
		}
		if m, ok := msg.(protocol.Progress); ok {
			if _, ok := j.marks[m.Stage]; !ok {
				j.marks[m.Stage] = round4(acceptedAt + m.ElapsedS)
			}
		}
		switch m := msg.(type) {
		case protocol.Progress:
			switch m.Stage {
			case "encoding":
				encStart = m.ElapsedS
			case "denoising":
				if m.Step == 0 {
					denStart = m.ElapsedS
				}
			case "decoding":
				decStart[m.Step] = m.ElapsedS
			case "saving":
				if m.Step == m.Total {
					saveEnd = m.ElapsedS
				} else {
					saveStart[m.Step] = m.ElapsedS
				}
			}
		case protocol.Preview:
			j.previews++
		case protocol.Result, protocol.Error:
			final = m
		}
	}
	j.wall = time.Since(t0).Seconds()
	res, ok := final.(protocol.Result)
	if !ok {
		werr, _ := final.(protocol.Error)
		return nil, fmt.Errorf("job %s ended with %s: %s %s", id, werr.Code, werr.Message, firstLine(werr.Detail))
	}
	j.metrics = res.Metrics
	j.images = res.Images
	j.marks["result"] = round4(j.wall)
	j.pngOK = checkPNG(j.images)
	j.encodeS = denStart - encStart
	for i := 0; i < batch; i++ {
		j.decodeS += saveStart[i] - decStart[i]
		next, ok := decStart[i+1]
		if !ok {
			next = saveEnd
		}
		j.saveS += next - saveStart[i]
	}
	for _, im := range j.images {
		os.Remove(im.Path) //nolint:errcheck // a benchmark's pictures are noise
	}
	return j, nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func benchOne(o *benchOptions, v benchVariant, model string, base bridge.Config, rep *benchReport, logf func(string, ...any)) *benchResult {
	res := &benchResult{Name: v.Name, Env: v.Env}
	if res.Env == nil {
		res.Env = []string{}
	}
	tmp, err := os.MkdirTemp("", "atelier-bench-")
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer os.RemoveAll(tmp)
	cfg := base
	// A compile cache of the variant's own, empty at first: the first image is a cold
	// start, the first after a restart a warm one.
	fastDir := filepath.Join(tmp, "fast")
	if o.fastDir != "" {
		fastDir = o.fastDir
	}
	cfg.Env = append([]string{"TORCHINDUCTOR_CACHE_DIR=" + filepath.Join(tmp, "inductor"),
		"ATELIER_FAST_DIR=" + fastDir}, v.Env...)
	var tail tailBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&tail, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg.StallTimeout = 5 * time.Minute
	s := &benchSession{br: bridge.New(cfg), o: o, model: model, outDir: filepath.Join(tmp, "out"), timeout: o.timeout}
	defer func() { s.br.Close() }()
	fail := func(err error) *benchResult {
		res.Error = err.Error()
		if t := s.br.StderrTail(); len(t) > 0 {
			res.Error += "\nworker stderr:\n" + strings.Join(t[max(0, len(t)-15):], "\n")
		}
		logf("variant %s failed: %v", v.Name, err)
		return res
	}

	first, err := s.job(1, 0)
	if err != nil {
		return fail(err)
	}
	res.FirstImageColdS = round4(first.wall)
	if h, ok := s.br.Hello(); ok && rep.Hello == nil {
		rep.Hello, _ = json.Marshal(h)
	}
	res.PNGOK = first.pngOK
	res.FirstImageMarks = first.marks
	res.FirstNoArtefactS = res.FirstImageColdS
	res.FastPathFirst = fastPathState(first)
	logf("  first image (cold) %.2fs, fast path %s", first.wall, res.FastPathFirst)
	if note := fastPathNote(first); note != "" {
		res.FastPathNote = note
		logf("  fast path off: %s", note)
	}
	if res.FastPathFirst == "building" {
		if err := waitFastPath(s, res, logf); err != nil {
			return fail(err)
		}
	}
	for i := 1; i < o.warmup; i++ {
		if _, err := s.job(1, 0); err != nil {
			return fail(err)
		}
	}
	var walls, totals, overheads, denoise, decode, save, encode []float64
	for i := 0; i < o.runs; i++ {
		j, err := s.job(1, 0)
		if err != nil {
			return fail(err)
		}
		walls = append(walls, j.wall)
		totals = append(totals, j.metrics.TotalS)
		overheads = append(overheads, j.wall-j.metrics.TotalS)
		denoise = append(denoise, j.metrics.DenoiseS)
		decode = append(decode, j.decodeS)
		save = append(save, j.saveS)
		encode = append(encode, j.encodeS)
		res.PeakMemBytes = max(res.PeakMemBytes, j.metrics.PeakMemBytes)
		res.FastPathTimed = fastPathState(j)
		if note := fastPathNote(j); note != "" {
			res.FastPathNote = note
		}
	}
	res.E2E = stats(walls)
	res.WorkerTotal = stats(totals)
	res.BridgeOverheadS = stats(overheads).MedianS
	res.BridgeOverheadPct = round4(100 * res.BridgeOverheadS / res.E2E.MedianS)
	res.DenoiseS = stats(denoise).MedianS
	res.StepMS = round4(1000 * res.DenoiseS / float64(o.steps))
	if rep.TFLOPPerStep > 0 && res.StepMS > 0 && o.cfg > 1 {
		res.TFLOPs = round4(rep.TFLOPPerStep / (res.StepMS / 1000))
	}
	res.DecodeS = stats(decode).MedianS
	res.SaveS = stats(save).MedianS
	res.EncodeS = stats(encode).MedianS
	if rep.ProgressLineUS > 0 {
		res.ProgressCostPct = round4(100 * rep.ProgressLineUS * 1e-6 * float64(o.steps+8) / res.E2E.MedianS)
	}
	logf("  e2e median %.3fs (worker %.3fs, denoise %.3fs, decode %.3fs, png %.3fs)",
		res.E2E.MedianS, res.WorkerTotal.MedianS, res.DenoiseS, res.DecodeS, res.SaveS)

	if o.previewEvery > 0 && o.previewEvery < o.steps {
		res.PreviewEvery = o.previewEvery
		var pw []float64
		for i := 0; i < o.runs; i++ {
			j, err := s.job(1, o.previewEvery)
			if err != nil {
				return fail(err)
			}
			pw = append(pw, j.wall)
		}
		st := stats(pw)
		res.PreviewE2E = &st
		res.PreviewCostPct = round4(100 * (st.MedianS - res.E2E.MedianS) / res.E2E.MedianS)
	}

	res.Batches = map[string]benchBatch{"1": {MedianS: res.E2E.MedianS, ImagesPerSec: round4(1 / res.E2E.MedianS)}}
	for _, b := range o.batches {
		if b == 1 || (o.batchFor != nil && !o.batchFor[v.Name]) {
			continue
		}
		if _, err := s.job(b, 0); err != nil { // warm-up (may compile for the new shape)
			return fail(err)
		}
		var bw []float64
		for i := 0; i < max(1, o.runs/2); i++ {
			j, err := s.job(b, 0)
			if err != nil {
				return fail(err)
			}
			bw = append(bw, j.wall)
		}
		med := stats(bw).MedianS
		res.Batches[strconv.Itoa(b)] = benchBatch{MedianS: med, ImagesPerSec: round4(float64(b) / med)}
	}

	if o.switchModel {
		// Another checkpoint of the same architecture, as a user switches models: the
		// worker keys models by folder, so a folder of links to the same files is loaded
		// afresh. The weights are the same, which changes no timing.
		other := filepath.Join(tmp, "switch-model")
		if err := linkModel(model, other); err != nil {
			logf("  no model switch timed: %v", err)
		} else {
			j, err := s.jobOn(other, 1, 0)
			if err != nil {
				return fail(err)
			}
			res.FirstImageSwitchS = round4(j.wall)
			res.FirstSwitchMarks = j.marks
			res.FastPathSwitch = fastPathState(j)
			logf("  first image after a model switch %.2fs", j.wall)
		}
	}

	if o.restart {
		s.br.Close()
		s.br = bridge.New(cfg)
		j, err := s.job(1, 0)
		if err != nil {
			return fail(err)
		}
		res.FirstImageWarmS = round4(j.wall)
		res.FirstWithArtefactS = res.FirstImageWarmS
		res.FastPathRestart = fastPathState(j)
		res.FirstWarmMarks = j.marks
		res.WarmRestartLog = s.br.StderrTail()
		logf("  first image after a restart (warm compile cache) %.2fs", j.wall)
	}
	return res
}

// fastPathState is the fast path's state a job reports, "off" where it says none.
func fastPathState(j *benchJob) string {
	if j.metrics != nil && j.metrics.Speed["fast_path"] != "" {
		return j.metrics.Speed["fast_path"]
	}
	return "off"
}

// fastPathNote is why a job's fast path was off, where the worker said.
func fastPathNote(j *benchJob) string {
	if j.metrics == nil {
		return ""
	}
	return j.metrics.Speed["fast_path_note"]
}

// waitFastPath runs jobs, as a user would, while the worker builds the fast path's
// artefact in the background, until one runs on it (or --fast-wait passes): the timed
// runs then measure the path a user gets from then on.
func waitFastPath(s *benchSession, res *benchResult, logf func(string, ...any)) error {
	t0 := time.Now()
	var walls []float64
	for {
		j, err := s.job(1, 0)
		if err != nil {
			return err
		}
		if st := fastPathState(j); st != "building" {
			res.FastPathReadyS = round4(time.Since(t0).Seconds())
			res.FastPathLoadJobS = round4(j.wall)
			logf("  fast path %s after %.1fs (%d jobs meanwhile); that job %.2fs", st, res.FastPathReadyS, len(walls), j.wall)
			if note := fastPathNote(j); note != "" {
				res.FastPathNote = note
				logf("  fast path off: %s", note)
			}
			break
		}
		walls = append(walls, j.wall)
		if time.Since(t0) > s.o.fastWait {
			logf("  fast path still building after %s: timing the plain path", s.o.fastWait)
			break
		}
	}
	if len(walls) > 0 {
		st := stats(walls)
		res.WhileBuildingE2E = &st
	}
	return nil
}

// linkModel makes dst a folder of symbolic links to the entries of the model folder src.
func linkModel(src, dst string) error {
	abs, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(abs)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.Symlink(filepath.Join(abs, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// checkPNG reports whether every image is a PNG on disk with a parameters text chunk.
func checkPNG(images []protocol.ImageResult) bool {
	if len(images) == 0 {
		return false
	}
	for _, im := range images {
		f, err := os.Open(im.Path)
		if err != nil {
			return false
		}
		chunks, err := media.ReadPNGText(f)
		f.Close()
		if _, ok := chunks["parameters"]; err != nil || !ok {
			return false
		}
	}
	return true
}

func printBenchTable(w io.Writer, rep *benchReport, base benchStats, baseStep, baseDecode float64, basePeak int64, baseBatches map[string]benchBatch) {
	fmt.Fprintf(w, "atelier bench: %s, %dx%d, %d steps, cfg %g; %d warm-up + %d counted runs\n",
		filepath.Base(rep.Model), rep.Width, rep.Height, rep.Steps, rep.CFG, rep.Warmup, rep.Runs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "variant\tmedian s\tp90 s\tspeedup\tstep ms\tTFLOP/s\tVAE s\tPNG s\tpeak GiB\tfirst cold s\tfirst warm s\tafter switch s\tIPC %\tprogress %\tpreview %\timg/s b1\tb2\tb4\t")
	tflops := func(stepS float64) string {
		if rep.TFLOPPerStep == 0 || stepS == 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f", rep.TFLOPPerStep/stepS)
	}
	ips := func(m map[string]benchBatch, k string) string {
		if b, ok := m[k]; ok {
			return fmt.Sprintf("%.2f", b.ImagesPerSec)
		}
		return "-"
	}
	gib := func(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<30)) }
	if base.N > 0 {
		fmt.Fprintf(tw, "diffusers (baseline)\t%.3f\t%.3f\t1.00\t%.1f\t%s\t%.3f\t-\t%s\t-\t-\t-\t-\t-\t-\t%s\t%s\t%s\t\n",
			base.MedianS, base.P90S, baseStep*1000, tflops(baseStep), baseDecode, gib(basePeak),
			ips(baseBatches, "1"), ips(baseBatches, "2"), ips(baseBatches, "4"))
	}
	for _, r := range rep.Variants {
		if r.Error != "" {
			fmt.Fprintf(tw, "%s\tfailed: %s\t\n", r.Name, firstLine(r.Error))
			continue
		}
		speed := "-"
		if r.RatioToBaseline > 0 {
			speed = fmt.Sprintf("%.2f", r.RatioToBaseline)
		}
		warm := "-"
		if r.FirstImageWarmS > 0 {
			warm = fmt.Sprintf("%.1f", r.FirstImageWarmS)
		}
		switched := "-"
		if r.FirstImageSwitchS > 0 {
			switched = fmt.Sprintf("%.1f", r.FirstImageSwitchS)
		}
		prev := "-"
		if r.PreviewE2E != nil {
			prev = fmt.Sprintf("%.1f", r.PreviewCostPct)
		}
		fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%s\t%.1f\t%s\t%.3f\t%.3f\t%s\t%.1f\t%s\t%s\t%.2f\t%.2f\t%s\t%s\t%s\t%s\t\n",
			r.Name, r.E2E.MedianS, r.E2E.P90S, speed, r.StepMS, tflops(r.StepMS/1000), r.DecodeS, r.SaveS,
			gib(r.PeakMemBytes), r.FirstImageColdS, warm, switched, r.BridgeOverheadPct, r.ProgressCostPct, prev,
			ips(r.Batches, "1"), ips(r.Batches, "2"), ips(r.Batches, "4"))
	}
	tw.Flush()
	for _, r := range rep.Variants {
		switch f := r.FP8Error; {
		case f == nil:
		case f.Skipped != "":
			fmt.Fprintf(w, "%s: FP8's error not measured: %s\n", r.Name, f.Skipped)
		case f.Error != "":
			fmt.Fprintf(w, "%s: FP8's error not measured: %s\n", r.Name, firstLine(f.Error))
		default:
			fmt.Fprintf(w, "%s: FP8 against float16 on seed %d: latents %.2f %%, pixels %.2f %% (PSNR %.1f dB, at most %d of 255)\n",
				r.Name, f.Seed, 100*f.LatentsRelErr, 100*f.PixelsRelErr, f.PSNR, f.PixelsMaxAbs)
		}
	}
	fmt.Fprintln(w, "variant settings:")
	for _, r := range rep.Variants {
		fmt.Fprintf(w, "  %s: %s\n", r.Name, strings.Join(append([]string{"(defaults)"}, r.Env...)[min(1, len(r.Env)):], " "))
	}
}

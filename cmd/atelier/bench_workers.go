package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"atelier/bridge"
	"atelier/core/jobs"
	"atelier/core/paths"
	"atelier/core/request"
	"atelier/core/store"
)

// benchScale is the scale-out part of the report (`atelier bench --workers N`):
// the same batch-count jobs through the real queue, run once by one worker and
// once by N, in one run of the bench.
type benchScale struct {
	Workers    int             `json:"workers"`
	Jobs       int             `json:"jobs"`       // jobs of each run (a batch count), one image each
	Variant    string          `json:"variant"`    // the worker settings used: the first variant's
	One        *benchScaleRun  `json:"one_worker"` // the same jobs on one worker
	Many       *benchScaleRun  `json:"n_workers"`  // and on Workers workers
	Speedup    float64         `json:"speedup"`    // n_workers.images_per_s / one_worker.images_per_s
	Efficiency float64         `json:"efficiency"` // speedup / workers: 1 is N× the one-worker rate
	Error      string          `json:"error,omitempty"`
	Slots      []benchScaleDev `json:"slots"` // the N workers: name and device
}

type benchScaleDev struct {
	Name   string `json:"name"`
	Device string `json:"device"`
}

// benchScaleRun is one run of the queue: from the first claim to the last
// job's commit, with every worker already warm (model loaded, compiled).
type benchScaleRun struct {
	Workers      int            `json:"workers"`
	Images       int            `json:"images"`
	WallS        float64        `json:"wall_s"`
	ImagesPerSec float64        `json:"images_per_s"`
	JobsBySlot   map[string]int `json:"jobs_by_slot"`
	WarmupS      float64        `json:"warmup_s"` // the warm-up job of every worker at once, not counted
}

// benchWorkers times n workers against one on the same jobs: each run has a
// history of its own in tmp (nothing is recorded in the user's), its workers
// are planned as `queue run --workers` plans them (one per GPU, or CPU workers
// sharing the cores) and warmed with one job each, then `jobs` queued jobs of
// a batch count run through the slot runner.
func benchWorkers(o *benchOptions, v benchVariant, model string, base bridge.Config, logf func(string, ...any)) *benchScale {
	sc := &benchScale{Workers: o.workers, Jobs: o.workerJobs, Variant: v.Name}
	fail := func(err error) *benchScale {
		sc.Error = err.Error()
		logf("scale-out failed: %v", err)
		return sc
	}
	tmp, err := os.MkdirTemp("", "atelier-bench-workers-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(tmp)
	cfg := base
	// One compile cache for all the runs' workers, as one user's workers share one.
	cfg.Env = append([]string{"TORCHINDUCTOR_CACHE_DIR=" + filepath.Join(tmp, "inductor")}, v.Env...)
	if o.fastDir != "" {
		// --fast-dir: the workers find the fast path's artefacts there, as the variants do.
		cfg.Env = append(cfg.Env, "ATELIER_FAST_DIR="+o.fastDir)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.StallTimeout = 5 * time.Minute
	gpus := bridge.DetectGPUs(context.Background())
	many, err := bridge.LocalSlots(o.workers, gpus, cfg)
	if err != nil {
		return fail(err)
	}
	for _, s := range many {
		sc.Slots = append(sc.Slots, benchScaleDev{Name: s.Name, Device: s.Device})
	}
	one, err := bridge.LocalSlots(1, gpus, cfg)
	if err != nil {
		return fail(err)
	}
	for i, specs := range [][]bridge.SlotSpec{one, many} {
		logf("scale-out: %d job(s) on %d worker(s)", o.workerJobs, len(specs))
		run, err := benchQueueRun(o, model, specs, filepath.Join(tmp, fmt.Sprintf("run%d", i)))
		if err != nil {
			return fail(err)
		}
		logf("  %.3f images/s (%d images in %.2fs; jobs by worker %v)", run.ImagesPerSec, run.Images, run.WallS, run.JobsBySlot)
		if i == 0 {
			sc.One = run
		} else {
			sc.Many = run
		}
	}
	if sc.One.ImagesPerSec > 0 {
		sc.Speedup = round4(sc.Many.ImagesPerSec / sc.One.ImagesPerSec)
		sc.Efficiency = round4(sc.Speedup / float64(len(many)))
	}
	return sc
}

// benchQueueRun runs o.workerJobs queued jobs on the slots of specs, in a
// history of its own under dir.
func benchQueueRun(o *benchOptions, model string, specs []bridge.SlotSpec, dir string) (*benchScaleRun, error) {
	dirs := paths.Paths{Data: dir, Cache: filepath.Join(dir, "cache"), Config: filepath.Join(dir, "config"),
		DB: filepath.Join(dir, "bench.db"), Images: filepath.Join(dir, "images"), Models: filepath.Join(dir, "models")}
	if err := dirs.EnsureDirs(); err != nil {
		return nil, err
	}
	history, err := store.OpenStore(dirs.DB)
	if err != nil {
		return nil, err
	}
	defer history.Close()
	pool := bridge.OpenPool(history, dirs, specs)
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout*time.Duration(o.workerJobs+1))
	defer cancel()

	req := request.Request{Prompt: "a lighthouse at dusk, oil painting", NegativePrompt: "fog, blur", Model: model,
		Scheduler: "euler", Steps: o.steps, CFG: o.cfg, Width: o.width, Height: o.height, Seed: 1000, BatchSize: 1}

	// Every worker warm before the clock starts: the rate is the queue's
	// steady state, not N model loads.
	t0 := time.Now()
	errs := make([]error, len(pool.Slots))
	var wg sync.WaitGroup
	for i, s := range pool.Slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Runner.Run(ctx, req, nil)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("warming worker %s: %w", pool.Slots[i].Name, err)
		}
	}
	warm := time.Since(t0).Seconds()

	reqs, err := request.ExpandBatchCount(req, o.workerJobs)
	if err != nil {
		return nil, err
	}
	for i := range reqs {
		if reqs[i], err = request.PrepareForQueue(reqs[i]); err != nil {
			return nil, err
		}
	}
	ids, err := history.Enqueue(ctx, 0, reqs)
	if err != nil {
		return nil, err
	}
	q := jobs.NewSlotRunner(pool.Slots)
	bySlot := map[string]int{}
	images := 0
	var failed error
	// Events come one at a time (the runner serialises them).
	q.OnEvent = func(e jobs.QueueEvent) {
		if e.Kind != jobs.QueueFinished {
			return
		}
		if e.Job.Status == store.StatusDone && e.Outcome != nil {
			bySlot[e.Slot]++
			images += len(e.Outcome.Images)
			for _, im := range e.Outcome.Images {
				os.Remove(im.Path) //nolint:errcheck // a benchmark's pictures are noise
			}
		} else if failed == nil {
			failed = fmt.Errorf("job %d on %s ended %s: %s", e.Job.ID, e.Slot, e.Job.Status, e.Job.ErrorMessage)
		}
	}
	t1 := time.Now()
	if err := q.Run(ctx, true); err != nil {
		return nil, err
	}
	wall := time.Since(t1).Seconds()
	if failed != nil {
		return nil, failed
	}
	for _, id := range ids {
		j, err := history.GetQueueJob(ctx, id)
		if err != nil {
			return nil, err
		}
		if j.Status != store.StatusDone {
			return nil, fmt.Errorf("job %d is %s after the run", id, j.Status)
		}
	}
	return &benchScaleRun{Workers: len(specs), Images: images, WallS: round4(wall),
		ImagesPerSec: round4(float64(images) / wall), JobsBySlot: bySlot, WarmupS: round4(warm)}, nil
}

// printBenchScale is the scale-out's line under the table.
func printBenchScale(w io.Writer, sc *benchScale) {
	if sc == nil {
		return
	}
	if sc.Error != "" {
		fmt.Fprintf(w, "scale-out (%d workers): failed: %s\n", sc.Workers, firstLine(sc.Error))
		return
	}
	fmt.Fprintf(w, "scale-out (%s, %d jobs of 1 image): 1 worker %.3f img/s, %d workers %.3f img/s: %.2f× (%.2f of %d×)\n",
		sc.Variant, sc.Jobs, sc.One.ImagesPerSec, sc.Many.Workers, sc.Many.ImagesPerSec, sc.Speedup, sc.Efficiency, sc.Many.Workers)
}

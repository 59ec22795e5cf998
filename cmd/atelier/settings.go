package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"atelier/bridge"
	"atelier/core/jobs"
	"atelier/core/paths"
	"atelier/core/settings"
	"atelier/core/store"
)

// applySettings gives the app's bridge and runner the stored settings (the
// Settings window's), with the command's flags over them and the environment
// over both: the device and speed mode become the worker's variables, a
// stored Python runs the worker, and the output folder receives the images.
// A setting that cannot be used is said and left out.
func applySettings(a *app, flags settings.Flags, stderr io.Writer) settings.Worker {
	ctx := context.Background()
	stored, err := settings.Load(ctx, a.store)
	if err != nil {
		fmt.Fprintln(stderr, "atelier: warning:", err)
	}
	w := settings.Resolve(stored, flags, os.LookupEnv)
	a.bridge.Reconfigure(w.Python, w.Env)
	if w.Python != "" {
		a.worker.managed = false // the user's own Python: no set-up of Atelier's venv
	}
	if dir := stored.OutputFolder; dir != "" {
		if err := settings.CheckFolder(dir); err != nil {
			fmt.Fprintf(stderr, "atelier: warning: the output folder of the settings cannot be used (%v); images go to %s\n", err, a.paths.Images)
		} else {
			a.runner.SetImagesFolder(dir)
		}
	}
	a.settings = stored
	return w
}

// workerFlags are the --device and --speed flags of generate and queue run.
type workerFlags struct{ device, speed *string }

func addWorkerFlags(fs *flag.FlagSet) workerFlags {
	return workerFlags{
		device: fs.String("device", "", "the worker's device: cpu, mps, cuda or cuda:N, N as nvidia-smi numbers the GPU (default: the Settings window's, else the best found; $"+settings.EnvDevice+" wins)"),
		speed: fs.String("speed", "", "the worker's speed mode: fast, balanced or low-vram (default: the Settings window's, else balanced; "+
			"an ATELIER_* speed variable of the environment wins over the mode's)"),
	}
}

// flags checks the values (the device only by its form: the worker says
// which it has when it starts).
func (f workerFlags) flags() (settings.Flags, error) {
	if err := settings.CheckDevice(*f.device, nil); err != nil {
		return settings.Flags{}, fmt.Errorf("invalid --device: %s", err.(*settings.Error).Message)
	}
	if err := settings.CheckSpeed(*f.speed); err != nil {
		return settings.Flags{}, fmt.Errorf("invalid --speed: %s", err.(*settings.Error).Message)
	}
	return settings.Flags{Device: *f.device, Speed: settings.Speed(*f.speed)}, nil
}

// raySaved, given to --ray, takes the Ray address from the settings.
const raySaved = "saved"

// storedWorker gives a queue run's base worker configuration the stored
// settings, as applySettings does for one worker: the mode's variables come
// before the slots' own (a slot's CUDA_VISIBLE_DEVICES and ATELIER_DEVICE
// win), and a stored Python runs every slot.
func storedWorker(history *store.Store, flags settings.Flags, base *bridge.Config, stderr io.Writer) (settings.Settings, settings.Worker) {
	stored, err := settings.Load(context.Background(), history)
	if err != nil {
		fmt.Fprintln(stderr, "atelier: warning:", err)
	}
	w := settings.Resolve(stored, flags, os.LookupEnv)
	base.Env = append(append([]string{}, w.Env...), base.Env...)
	if w.Python != "" {
		base.Python = w.Python
	}
	return stored, w
}

// gpusFor narrows the GPUs a queue run plans workers for to the device asked
// for: none for cpu or mps (CPU workers), the one GPU of cuda:N (N as
// nvidia-smi numbers it, the slot's name: bridge.SlotDevice), all for cuda or auto.
func gpusFor(device string, gpus []string) ([]string, error) {
	switch {
	case device == "cpu" || device == "mps":
		return nil, nil
	case strings.HasPrefix(device, "cuda:"):
		var names []string
		for i, id := range gpus {
			if bridge.SlotDevice(i, id) == device {
				return gpus[i : i+1], nil
			}
			names = append(names, bridge.SlotDevice(i, id))
		}
		return nil, fmt.Errorf("the device %s is not on this machine, which has %d GPU(s)%s: choose another in the Settings window or with --device (ATELIER_DEVICE wins over both)",
			device, len(gpus), listed(names))
	}
	return gpus, nil
}

// listed is " (a, b)", or nothing for none.
func listed(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return " (" + strings.Join(names, ", ") + ")"
}

// setImagesFolder points every slot's runner at the stored output folder.
func setImagesFolder(slots []jobs.Slot, stored settings.Settings, dirs paths.Paths, stderr io.Writer) {
	dir := stored.OutputFolder
	if dir == "" {
		return
	}
	if err := settings.CheckFolder(dir); err != nil {
		fmt.Fprintf(stderr, "atelier: warning: the output folder of the settings cannot be used (%v); images go to %s\n", err, dirs.Images)
		return
	}
	for _, s := range slots {
		s.Runner.SetImagesFolder(dir)
	}
}

// rayProbeTimeout bounds the studio's wait for a saved Ray cluster before its
// window opens; an unreachable one then leaves the queue on the app's worker.
const rayProbeTimeout = 45 * time.Second

// studioQueue is the studio's queue runner: on the app's own worker, sharing
// it with Generate, or, with a Ray address in the settings, on that cluster's
// actors (one per GPU there) through the same slots as `queue run --ray`, while
// Generate stays on the app's worker. A cluster that cannot be used is said on
// stderr and in note, and the queue runs on the app's worker. close stops the
// actors' proxies.
func studioQueue(ctx context.Context, a *app, stderr io.Writer) (q *jobs.QueueRunner, out runnersFolder, note string, close func()) {
	local := func(note string) (*jobs.QueueRunner, runnersFolder, string, func()) {
		return jobs.NewQueueRunner(a.runner), runnersFolder{a.runner}, note, func() {}
	}
	addr := a.settings.RayAddress
	if addr == "" {
		return local("")
	}
	base, _, err := bridgeConfig(a.paths, stderr)
	if err != nil {
		return local("")
	}
	stored, _ := storedWorker(a.store, settings.Flags{}, &base, stderr)
	pctx, cancel := context.WithTimeout(ctx, rayProbeTimeout)
	defer cancel()
	cl, err := bridge.ProbeRay(pctx, base, addr)
	var specs []bridge.SlotSpec
	if err == nil {
		specs, err = bridge.RaySlots(0, cl, base, addr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "atelier: the Ray cluster of the settings (%s) cannot be used: %v\n", addr, err)
		return local(fmt.Sprintf("The Ray cluster at %s cannot be used, so the queue runs on this machine (%s).", addr, firstLine(err.Error())))
	}
	pool := bridge.OpenPool(a.store, a.paths, specs)
	setImagesFolder(pool.Slots, stored, a.paths, stderr)
	fmt.Fprintf(stderr, "atelier: the queue runs on the Ray cluster at %s: %d actor(s)\n", addr, len(specs))
	out = runnersFolder{a.runner}
	for _, sl := range pool.Slots {
		out = append(out, sl.Runner)
	}
	return jobs.NewSlotRunner(pool.Slots), out,
		fmt.Sprintf("Now the queue runs on the Ray cluster at %s (%d actor(s)); Generate runs on this machine.", addr, len(specs)), pool.Close
}

// runnersFolder gives a new output folder to every runner of the studio.
type runnersFolder []*jobs.Runner

func (r runnersFolder) SetImagesFolder(dir string) {
	for _, x := range r {
		x.SetImagesFolder(dir)
	}
}

func (r runnersFolder) ImagesFolder() string { return r[0].ImagesFolder() }

// heldWorker is the app's bridge, whose Start starts a worker only when this
// process holds the device's lease: another Atelier process holding it runs
// this one's jobs on its worker, so none starts here (at the studio's start,
// nor after the Settings window changed the worker's settings).
type heldWorker struct {
	*bridge.Bridge
	runner *jobs.Runner
}

func (w heldWorker) Start(ctx context.Context) error {
	if held, _, err := w.runner.HoldsDevice(ctx); err == nil && !held {
		return nil
	}
	return w.Bridge.Start(ctx)
}

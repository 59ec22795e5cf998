package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"atelier/core/jobs"
	"atelier/core/paths"
	"atelier/core/store"
)

// MaxWorkers bounds the workers of one queue run: each holds a model in memory.
const MaxWorkers = 64

// RayDevice is the Device of a slot whose worker is a Ray actor: no job can be
// pinned to it (store.CheckDevice refuses it), so such a slot takes only the
// jobs pinned to no device, and records the device its actor reports.
const RayDevice = "ray"

// SlotSpec says how to start the worker of one slot of the queue: its name (in
// messages), the device it serves as the queue names it (cpu, cuda:N; RayDevice
// for an actor; empty: whatever the worker picks) and its bridge's
// configuration. A slot of another transport (a process that speaks the worker
// protocol on stdio and forwards the jobs elsewhere, as the Ray proxy does) is a
// SlotSpec whose Config sets Module or Command; nothing else changes.
type SlotSpec struct {
	Name   string
	Device string
	Config Config
}

// DetectGPUs lists the NVIDIA GPUs the workers may use, as the numbers
// CUDA_VISIBLE_DEVICES takes: its own entries when it is set (so a user can
// restrict the GPUs as for any CUDA program), else nvidia-smi's indices. None
// on a machine without either.
func DetectGPUs(ctx context.Context) []string {
	if v, ok := os.LookupEnv("CUDA_VISIBLE_DEVICES"); ok {
		var ids []string
		for _, f := range strings.Split(v, ",") {
			f = strings.TrimSpace(f)
			if f == "" || strings.HasPrefix(f, "-") {
				break // CUDA ignores the entries from an invalid one on
			}
			ids = append(ids, f)
		}
		return ids
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nvidia-smi", "--query-gpu=index", "--format=csv,noheader").Output()
	if err != nil {
		return nil
	}
	var ids []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			if _, err := strconv.Atoi(l); err == nil {
				ids = append(ids, l)
			}
		}
	}
	return ids
}

// SlotDevice names the GPU at place i of DetectGPUs's list, id: cuda:<id>,
// its nvidia-smi index, the number users see everywhere (queue add --device,
// generate, Settings); a GPU listed by UUID is its place in the list.
func SlotDevice(i int, id string) string {
	if _, err := strconv.Atoi(id); err != nil {
		return "cuda:" + strconv.Itoa(i)
	}
	return "cuda:" + id
}

// LocalSlots plans n workers on this machine (n 0: one per GPU, or one worker
// when there is none): one per GPU, each seeing only its own through
// CUDA_VISIBLE_DEVICES, or n CPU workers that share the cores between them.
func LocalSlots(n int, gpus []string, base Config) ([]SlotSpec, error) {
	if n < 0 || n > MaxWorkers {
		return nil, fmt.Errorf("give 1 to %d workers (or none: one worker per GPU)", MaxWorkers)
	}
	with := func(env ...string) Config {
		c := base
		c.Env = append(append([]string{}, base.Env...), env...)
		return c
	}
	if len(gpus) > 0 {
		if n == 0 {
			n = len(gpus)
		}
		if n > len(gpus) {
			return nil, fmt.Errorf("this machine has %d GPU(s) (%s), and each GPU gets one worker; give at most %d",
				len(gpus), strings.Join(gpus, ", "), len(gpus))
		}
		slots := make([]SlotSpec, n)
		for i, id := range gpus[:n] {
			dev := SlotDevice(i, id)
			// Inside the worker the one visible GPU is cuda:0. CUDA numbers the GPUs
			// of CUDA_VISIBLE_DEVICES in nvidia-smi's (PCI) order only when told.
			env := []string{"CUDA_VISIBLE_DEVICES=" + id, "ATELIER_DEVICE=cuda"}
			if _, ok := os.LookupEnv("CUDA_DEVICE_ORDER"); !ok {
				env = append(env, "CUDA_DEVICE_ORDER=PCI_BUS_ID")
			}
			slots[i] = SlotSpec{Name: dev, Device: dev, Config: with(env...)}
		}
		return slots, nil
	}
	if n <= 1 {
		// One worker, as before there were several. On a Mac it picks its
		// device itself (mps) and serves every job; elsewhere, without a
		// GPU, it is a CPU worker and leaves jobs pinned to a GPU queued.
		if runtime.GOOS == "darwin" {
			return []SlotSpec{{Name: "worker", Config: base}}, nil
		}
		return []SlotSpec{{Name: "cpu0", Device: "cpu", Config: base}}, nil
	}
	// Several CPU workers split the cores, or each would start a thread per
	// core and they would all fight over them. OMP_NUM_THREADS set by the
	// user wins.
	var env []string
	if _, ok := os.LookupEnv("OMP_NUM_THREADS"); !ok {
		env = append(env, fmt.Sprintf("OMP_NUM_THREADS=%d", max(1, runtime.NumCPU()/n)))
	}
	slots := make([]SlotSpec, n)
	for i := range slots {
		slots[i] = SlotSpec{Name: fmt.Sprintf("cpu%d", i), Device: "cpu",
			Config: with(append([]string{"ATELIER_DEVICE=cpu", "CUDA_VISIBLE_DEVICES="}, env...)...)}
	}
	return slots, nil
}

// RayProxyModule speaks the worker protocol on stdio and runs the jobs on a Ray
// actor (python/atelier_worker/ray_proxy.py, docs/scaling.md).
const RayProxyModule = "atelier_worker.ray_proxy"

// RayConfig is base with the Ray proxy instead of the worker: the same
// protocol on its stdin and stdout, with the jobs run by an actor of its own on
// the cluster at addr. A lost actor ends the proxy, which the bridge reports as
// a crashed worker, so the queue re-runs the job as after a local crash.
func RayConfig(base Config, addr string) Config {
	c := base
	c.Module = RayProxyModule
	c.Args = append(append([]string{}, base.Args...), "--address", addr)
	return c
}

// RayCluster is what the proxy's --slots says of a cluster: how many actors it
// holds (one per GPU, or per CPU where it has no GPU).
type RayCluster struct {
	Slots int `json:"slots"`
	GPUs  int `json:"gpus"`
	CPUs  int `json:"cpus"`
}

// ErrRayMissing is returned (wrapped) when the worker's Python has no Ray.
var ErrRayMissing = errors.New("the Ray package is not installed in the worker's Python")

// ProbeRay asks the cluster at addr what it holds, before any job starts, so
// that an unreachable cluster or a missing Ray is said at once and plainly.
func ProbeRay(ctx context.Context, base Config, addr string) (RayCluster, error) {
	var cl RayCluster
	cfg := RayConfig(base, addr)
	cfg.Args = append(cfg.Args, "--slots")
	argv, dir, err := cfg.WorkerCommand()
	if err != nil {
		return cl, err
	}
	// An upper bound only: connecting to a cluster takes seconds.
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), "PYTHONPATH="+dir), cfg.Env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		last := lastLines(stderr.String(), 3)
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.ExitCode() == 2 && strings.Contains(last, "not installed") {
			return cl, fmt.Errorf("%w: run `make venv-ray` (%s)", ErrRayMissing, last)
		}
		return cl, fmt.Errorf("cannot use the Ray cluster at %s: %v\n%s", addr, err, last)
	}
	if err := json.Unmarshal(out, &cl); err != nil {
		return cl, fmt.Errorf("the Ray proxy's answer %q: %v", strings.TrimSpace(string(out)), err)
	}
	if cl.Slots < 1 {
		return cl, fmt.Errorf("the Ray cluster at %s has no GPU and no CPU for an actor", addr)
	}
	return cl, nil
}

// RaySlots plans n slots on the Ray cluster cl at addr, one actor each (its own
// proxy, which places one actor that takes a GPU, or a CPU on a cluster
// without GPUs); n 0 is one per GPU, or per CPU, of the cluster. More actors
// than the cluster has room for would wait for a place while holding a job,
// so they are refused.
func RaySlots(n int, cl RayCluster, base Config, addr string) ([]SlotSpec, error) {
	if n < 0 || n > MaxWorkers {
		return nil, fmt.Errorf("give 1 to %d actors (or none: one per GPU of the cluster)", MaxWorkers)
	}
	if n == 0 {
		n = min(cl.Slots, MaxWorkers)
	}
	if n > cl.Slots {
		what := fmt.Sprintf("%d GPU(s)", cl.GPUs)
		if cl.GPUs == 0 {
			what = fmt.Sprintf("no GPU and %d CPU(s)", cl.CPUs)
		}
		return nil, fmt.Errorf("the Ray cluster at %s has %s, room for %d actor(s) of one each; give at most %d",
			addr, what, cl.Slots, cl.Slots)
	}
	cfg := RayConfig(base, addr)
	slots := make([]SlotSpec, n)
	for i := range slots {
		slots[i] = SlotSpec{Name: fmt.Sprintf("ray%d", i), Device: RayDevice, Config: cfg}
	}
	return slots, nil
}

// Pool is the bridges and runners of the slots of one queue run; a bridge
// starts its worker at its first job.
type Pool struct {
	bridges []*Bridge
	Slots   []jobs.Slot
}

// OpenPool makes a bridge and a runner for each spec, all recording into history.
func OpenPool(history *store.Store, dirs paths.Paths, specs []SlotSpec) *Pool {
	p := &Pool{}
	for _, s := range specs {
		br := New(s.Config)
		r := jobs.NewRunner(history, br, dirs)
		r.Device = s.Device
		p.bridges = append(p.bridges, br)
		p.Slots = append(p.Slots, jobs.Slot{Name: s.Name, Runner: r})
	}
	return p
}

// Close stops every slot's worker.
func (p *Pool) Close() {
	for _, b := range p.bridges {
		b.Close()
	}
}

// DevicesOf is the set of devices the slots serve ("" when one serves any).
func DevicesOf(specs []SlotSpec) map[string]bool {
	out := map[string]bool{}
	for _, s := range specs {
		out[s.Device] = true
	}
	return out
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

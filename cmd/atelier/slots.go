package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"atelier/bridge"
	"atelier/core/jobs"
	"atelier/core/paths"
	"atelier/core/store"
)

// maxWorkers bounds --workers: each worker holds a model in memory.
const maxWorkers = 64

// workerSlot says how to start the worker of one slot of "queue run": its
// name (in messages), the device it serves as the queue names it (cpu,
// cuda:N; empty: whatever the worker picks) and its bridge's configuration.
// A slot of another transport (a process that speaks the worker protocol on
// stdio and forwards the jobs elsewhere) is a workerSlot whose Config sets
// Command (and Env); nothing else changes. docs/architecture.md, "Several
// workers", describes the seam.
type workerSlot struct {
	Name   string
	Device string
	Config bridge.Config
}

// detectGPUs lists the NVIDIA GPUs the workers may use, as the numbers
// CUDA_VISIBLE_DEVICES takes: its own entries when it is set (so a user can
// restrict the GPUs as for any CUDA program), else nvidia-smi's indices.
// None on a machine without either.
func detectGPUs(ctx context.Context) []string {
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

// localSlots plans n workers on this machine (n 0: one per GPU, or one
// worker when there is none): one per GPU, each seeing only its own through
// CUDA_VISIBLE_DEVICES, or n CPU workers that share the cores between them.
func localSlots(n int, gpus []string, base bridge.Config) ([]workerSlot, error) {
	if n < 0 || n > maxWorkers {
		return nil, fmt.Errorf("--workers %d: give 1 to %d (or leave it out: one worker per GPU)", n, maxWorkers)
	}
	with := func(env ...string) bridge.Config {
		c := base
		c.Env = append(append([]string{}, base.Env...), env...)
		return c
	}
	if len(gpus) > 0 {
		if n == 0 {
			n = len(gpus)
		}
		if n > len(gpus) {
			return nil, fmt.Errorf("--workers %d: this machine has %d GPU(s) (%s), and each GPU gets one worker; give at most %d",
				n, len(gpus), strings.Join(gpus, ", "), len(gpus))
		}
		slots := make([]workerSlot, n)
		for i, id := range gpus[:n] {
			dev := "cuda:" + id
			if _, err := strconv.Atoi(id); err != nil {
				dev = "cuda:" + strconv.Itoa(i) // a GPU named by UUID: its place in the list
			}
			// Inside the worker the one visible GPU is cuda:0.
			slots[i] = workerSlot{Name: dev, Device: dev, Config: with("CUDA_VISIBLE_DEVICES="+id, "ATELIER_DEVICE=cuda")}
		}
		return slots, nil
	}
	if n <= 1 {
		// One worker, as before there were several. On a Mac it picks its
		// device itself (mps) and serves every job; elsewhere, without a
		// GPU, it is a CPU worker and leaves jobs pinned to a GPU queued.
		if runtime.GOOS == "darwin" {
			return []workerSlot{{Name: "worker", Config: base}}, nil
		}
		return []workerSlot{{Name: "cpu0", Device: "cpu", Config: base}}, nil
	}
	// Several CPU workers split the cores, or each would start a thread per
	// core and they would all fight over them. OMP_NUM_THREADS set by the
	// user wins.
	var env []string
	if _, ok := os.LookupEnv("OMP_NUM_THREADS"); !ok {
		env = append(env, fmt.Sprintf("OMP_NUM_THREADS=%d", max(1, runtime.NumCPU()/n)))
	}
	slots := make([]workerSlot, n)
	for i := range slots {
		slots[i] = workerSlot{Name: fmt.Sprintf("cpu%d", i), Device: "cpu",
			Config: with(append([]string{"ATELIER_DEVICE=cpu", "CUDA_VISIBLE_DEVICES="}, env...)...)}
	}
	return slots, nil
}

// slotPool is the bridges and runners of the slots of one "queue run".
type slotPool struct {
	bridges []*bridge.Bridge
	slots   []jobs.Slot
}

// openSlots starts nothing yet: each bridge starts its worker at its first job.
func openSlots(history *store.Store, dirs paths.Paths, specs []workerSlot) *slotPool {
	p := &slotPool{}
	for _, s := range specs {
		br := bridge.New(s.Config)
		r := jobs.NewRunner(history, br, dirs)
		r.Device = s.Device
		p.bridges = append(p.bridges, br)
		p.slots = append(p.slots, jobs.Slot{Name: s.Name, Runner: r})
	}
	return p
}

func (p *slotPool) close() {
	for _, b := range p.bridges {
		b.Close()
	}
}

// devices is the set of devices the slots serve ("" when one serves any).
func devicesOf(specs []workerSlot) map[string]bool {
	out := map[string]bool{}
	for _, s := range specs {
		out[s.Device] = true
	}
	return out
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"atelier/bridge"
)

// rayProxyModule speaks the worker protocol on stdio and runs the jobs on a
// Ray actor (python/atelier_worker/ray_proxy.py, docs/scaling.md).
const rayProxyModule = "atelier_worker.ray_proxy"

// rayWorker runs the Ray proxy instead of the worker: the same protocol on its
// stdin and stdout, with the jobs run by an actor on the cluster at addr. A lost
// actor ends the proxy, which the bridge reports as a crashed worker, so the
// queue re-runs the job as after a local crash.
func rayWorker(addr string) func(*bridge.Config) {
	return func(c *bridge.Config) {
		c.Module = rayProxyModule
		c.Args = append(c.Args, "--address", addr)
	}
}

// rayCluster is what the proxy's --slots says of a cluster: how many actors it
// holds (one per GPU, or per CPU where it has no GPU).
type rayCluster struct {
	Slots int `json:"slots"`
	GPUs  int `json:"gpus"`
	CPUs  int `json:"cpus"`
}

// probeRay asks the cluster at addr what it holds, before any job starts, so
// that an unreachable cluster or a missing Ray is said at once and plainly.
func probeRay(ctx context.Context, cfg bridge.Config, addr string) (rayCluster, error) {
	var cl rayCluster
	rayWorker(addr)(&cfg)
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
			return cl, fmt.Errorf("the Ray package is not installed in the worker's Python: run `make venv-ray` (%s)", last)
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

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

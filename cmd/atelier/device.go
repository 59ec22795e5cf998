package main

import (
	"context"
	"runtime"
	"strconv"
	"strings"

	"atelier/bridge"
	"atelier/core/store"
)

// autoDevice is the lease name of a worker that picks its own device (a Mac's
// single worker, which uses mps when it can).
const autoDevice = "auto"

// leaseName is the device lease a worker of device takes ("" is a worker that
// picks its device itself).
func leaseName(device string) string {
	if device == "" {
		return autoDevice
	}
	return device
}

// appDevice is the device the single worker of `generate` and the studio runs
// on, named as "queue run" names its slots, so that all of them share one
// lease (docs/architecture.md, "One worker per device"): the device asked for
// (ATELIER_DEVICE, a flag or the settings, settings.Resolve's) when it names
// one, else the first GPU, else the CPU (on a Mac, the worker's own choice).
// cuda:N, which counts the GPUs the worker sees, is the Nth GPU found.
func appDevice(ctx context.Context, device string) string {
	switch device {
	case "cpu", "mps":
		return device
	}
	gpus := bridge.DetectGPUs(ctx)
	if n, err := strconv.Atoi(strings.TrimPrefix(device, "cuda:")); err == nil && strings.HasPrefix(device, "cuda:") && n < len(gpus) {
		if _, err := strconv.Atoi(gpus[n]); err == nil {
			return "cuda:" + gpus[n]
		}
		return device
	}
	if len(gpus) > 0 {
		if _, err := strconv.Atoi(gpus[0]); err == nil {
			return "cuda:" + gpus[0]
		}
		return "cuda:0" // a GPU named by UUID: its place in the list, as bridge.LocalSlots names it
	}
	if runtime.GOOS == "darwin" {
		return autoDevice
	}
	return "cpu"
}

// shareSlots makes each local slot of "queue run" take its device's lease
// before it starts a worker; a Ray actor is the cluster's, not this machine's.
func shareSlots(p *bridge.Pool) {
	for _, s := range p.Slots {
		if s.Runner.Device != bridge.RayDevice {
			s.Runner.ShareDevice(leaseName(s.Runner.Device))
		}
	}
}

// releaseLeases gives up this process's device leases once its workers have
// stopped, so that a waiting process takes the devices over at once.
func releaseLeases(history *store.Store) {
	_ = history.ReleaseMyLeases(context.Background()) // a lease left behind is taken over as a dead holder's
}

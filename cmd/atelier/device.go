package main

import (
	"context"
	"fmt"

	"atelier/bridge"
	"atelier/core/settings"
	"atelier/core/store"
)

// autoDevice is the lease name of a worker that picks its own device (a Mac's
// single worker, which uses mps when it can).
const autoDevice = "auto"

// leaseName is the device lease of a worker planned for slotDevice, the one
// name every command uses (docs/architecture.md, "Which device"). asked is the
// device asked for (settings.Resolve's: ATELIER_DEVICE, a flag or the
// settings). A worker planned for no device (a Mac's single worker) picks its
// own from the ATELIER_DEVICE it is given: cpu and mps name that device, so
// that a studio and a queue run told the same share one lease; anything else
// is the worker's own choice, "auto".
func leaseName(slotDevice, asked string) string {
	if slotDevice != "" {
		return slotDevice
	}
	switch asked {
	case "cpu", "mps":
		return asked
	}
	return autoDevice
}

// appDevice is the device lease of the single worker of `generate`, the
// studio and the other one-worker commands: the lease of queue run's first
// worker for the same device asked for (see appDeviceFor).
func appDevice(ctx context.Context, asked string) string {
	var gpus []string
	if asked != "cpu" && asked != "mps" {
		gpus = bridge.DetectGPUs(ctx)
	}
	return appDeviceFor(asked, gpus)
}

// appDeviceFor is appDevice with the GPUs found: queue run's first slot,
// planned as queue run plans it (gpusFor, then bridge.LocalSlots) and named by
// leaseName, so that all of them share one lease. A device that is not on this machine (cuda:N past the GPUs found,
// which queue run refuses) names its own lease; its worker says what is wrong.
func appDeviceFor(asked string, gpus []string) string {
	gpus, err := gpusFor(asked, gpus)
	var specs []bridge.SlotSpec
	if err == nil {
		specs, err = bridge.LocalSlots(1, gpus, bridge.Config{})
	}
	if err != nil || len(specs) == 0 {
		if asked == "" || asked == settings.DeviceAuto {
			return autoDevice
		}
		return asked
	}
	return leaseName(specs[0].Device, asked)
}

// shareSlots makes each local slot of "queue run" take its device's lease
// (asked: the device asked for) before it starts a worker; a Ray actor is the
// cluster's, not this machine's.
func shareSlots(p *bridge.Pool, asked string) {
	for _, s := range p.Slots {
		if s.Runner.Device != bridge.RayDevice {
			s.Runner.ShareDevice(leaseName(s.Runner.Device, asked))
		}
	}
}

// releaseLeases gives up this process's device leases once its workers have
// stopped, so that a waiting process takes the devices over at once.
func releaseLeases(history *store.Store) {
	_ = history.ReleaseMyLeases(context.Background()) // a lease left behind is taken over as a dead holder's
}

// heldByOther says that another live Atelier process holds device, for a
// command that will not share it.
func heldByOther(l store.Lease) string {
	return fmt.Sprintf("another Atelier process (%s) holds %s since %s", l.Holder(), l.Device, l.AcquiredAt.Local().Format("15:04:05"))
}

// takeLeases takes the leases of devices for this process, for a command that
// needs them to itself (bench); the first held by another live process is
// returned, and no lease is kept then.
func takeLeases(ctx context.Context, history *store.Store, devices []string) (*store.Lease, error) {
	for _, d := range devices {
		held, l, err := history.AcquireLease(ctx, d)
		if err != nil {
			_ = history.ReleaseMyLeases(ctx)
			return nil, err
		}
		if !held {
			_ = history.ReleaseMyLeases(ctx)
			return &l, nil
		}
	}
	return nil, nil
}

package main

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/bridge"
	"atelier/core/paths"
	"atelier/core/store"
)

// The single worker of the studio and generate and queue run's first slot
// must name one device's lease alike, or two workers load a model onto one
// device.
func TestTheAppAndQueueRunNameTheSameLeaseForOneDevice(t *testing.T) {
	history, err := store.OpenStore(filepath.Join(t.TempDir(), "atelier.db"))
	require.NoError(t, err)
	defer history.Close()
	gpuSets := [][]string{nil, {"0", "1"}, {"3"}, {"GPU-8f2a", "GPU-77c1"}}
	for _, gpus := range gpuSets {
		for _, asked := range []string{"", "auto", "cpu", "mps", "cuda", "cuda:1"} {
			what := fmt.Sprintf("device %q, GPUs %v", asked, gpus)
			// queue run's slots, planned and shared as queue run does.
			narrowed, err := gpusFor(asked, gpus)
			if err != nil {
				continue // queue run refuses it
			}
			specs, err := bridge.LocalSlots(0, narrowed, bridge.Config{})
			require.NoError(t, err, what)
			pool := bridge.OpenPool(history, paths.Paths{}, specs)
			shareSlots(pool, asked)
			assert.Equal(t, pool.Slots[0].Runner.SharedDevice(), appDeviceFor(asked, gpus), what)
			pool.Close()
		}
	}

	// On a Mac queue run plans one worker for no device, which picks its
	// own from ATELIER_DEVICE: mps and cpu name those devices, as the
	// app's worker does.
	for asked, want := range map[string]string{"": "auto", "auto": "auto", "mps": "mps", "cpu": "cpu"} {
		assert.Equal(t, want, leaseName("", asked), "device %q", asked)
	}
}

// queue run's --device cuda:N picks the GPU nvidia-smi numbers N, the slot
// that queue add --device cuda:N pins jobs to, not the Nth GPU found.
func TestQueueRunDeviceIsTheNvidiaSmiIndex(t *testing.T) {
	got, err := gpusFor("cuda:3", []string{"1", "3"})
	require.NoError(t, err)
	assert.Equal(t, []string{"3"}, got)
	specs, err := bridge.LocalSlots(0, got, bridge.Config{})
	require.NoError(t, err)
	assert.Equal(t, "cuda:3", specs[0].Device)
	_, err = gpusFor("cuda:0", []string{"1", "3"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "the device cuda:0 is not on this machine, which has 2 GPU(s) (cuda:1, cuda:3)")
	got, err = gpusFor("cuda:1", []string{"GPU-8f2a", "GPU-77c1"})
	require.NoError(t, err)
	assert.Equal(t, []string{"GPU-77c1"}, got, "by UUID: the place in the list")
}

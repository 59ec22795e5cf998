package bridge

import (
	"runtime"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/store"
)

func TestLocalSlotsGiveEachGPUItsOwnWorker(t *testing.T) {
	base := Config{Env: []string{"KEEP=1"}}
	slots, err := LocalSlots(0, []string{"0", "3"}, base)
	require.NoError(t, err)
	require.Len(t, slots, 2, "default: one worker per GPU")
	for i, want := range []string{"0", "3"} {
		s := slots[i]
		assert.Equal(t, "cuda:"+want, s.Device)
		assert.Equal(t, s.Device, s.Name)
		assert.Contains(t, s.Config.Env, "CUDA_VISIBLE_DEVICES="+want, "the worker sees only its GPU")
		assert.Contains(t, s.Config.Env, "CUDA_DEVICE_ORDER=PCI_BUS_ID", "CUDA numbers it as nvidia-smi does")
		assert.Equal(t, "cuda:"+want, SlotDevice(i, want), "the slot is named by nvidia-smi's index")
		assert.Contains(t, s.Config.Env, "KEEP=1", "the base environment is kept")
	}
	assert.Equal(t, []string{"KEEP=1"}, base.Env, "the base is not changed")

	assert.Equal(t, "cuda:1", SlotDevice(1, "GPU-77c1"), "by UUID: the place in the list")

	_, err = LocalSlots(3, []string{"0", "1"}, base)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "give at most 2")
	_, err = LocalSlots(MaxWorkers+1, nil, base)
	require.Error(t, err)
}

func TestLocalSlotsWithoutAGPUAreCPUWorkers(t *testing.T) {
	slots, err := LocalSlots(3, nil, Config{})
	require.NoError(t, err)
	require.Len(t, slots, 3)
	for _, s := range slots {
		assert.Equal(t, "cpu", s.Device)
		assert.Contains(t, s.Config.Env, "ATELIER_DEVICE=cpu")
		assert.True(t, slices.ContainsFunc(s.Config.Env, func(e string) bool { return e == "CUDA_VISIBLE_DEVICES=" }))
	}
	one, err := LocalSlots(0, nil, Config{})
	require.NoError(t, err)
	require.Len(t, one, 1, "without a GPU the default is one worker")
	if runtime.GOOS != "darwin" {
		assert.Equal(t, "cpu", one[0].Device)
	}
}

func TestRaySlotsAreOneProxyPerActorAndTakeOnlyUnpinnedJobs(t *testing.T) {
	cl := RayCluster{Slots: 4, GPUs: 4, CPUs: 64}
	slots, err := RaySlots(0, cl, Config{}, "10.0.0.5:6379")
	require.NoError(t, err)
	require.Len(t, slots, 4, "default: one actor per GPU of the cluster")
	for _, s := range slots {
		assert.Equal(t, RayDevice, s.Device)
		assert.Equal(t, RayProxyModule, s.Config.Module)
		assert.Equal(t, []string{"--address", "10.0.0.5:6379"}, s.Config.Args)
	}
	assert.Error(t, store.CheckDevice(RayDevice), "no job can be pinned to a Ray slot's device name")

	two, err := RaySlots(2, cl, Config{}, "h:1")
	require.NoError(t, err)
	assert.Len(t, two, 2)
	_, err = RaySlots(5, RayCluster{Slots: 2, CPUs: 2}, Config{}, "h:1")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no GPU and 2 CPU(s), room for 2 actor(s)")
}

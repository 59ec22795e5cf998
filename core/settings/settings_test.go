package settings

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/protocol"
	"atelier/core/store"
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.OpenStore(filepath.Join(t.TempDir(), "atelier.db"))
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st
}

func TestSettingsRoundTripThroughTheHistory(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(t.TempDir(), "atelier.db")
	st, err := store.OpenStore(path)
	require.NoError(t, err)

	got, err := Load(ctx, st)
	require.NoError(t, err)
	assert.Equal(t, Settings{}, got, "nothing stored: the defaults")
	assert.Equal(t, SpeedBalanced, got.SpeedOrDefault())

	want := Settings{Device: "cuda:1", Speed: SpeedLowVRAM, Python: "/opt/py/bin/python",
		OutputFolder: dir, RayAddress: "ray://head:10001"}
	require.NoError(t, Save(ctx, st, want))
	require.NoError(t, st.Close())

	// Another process (a new open of the same file) reads the same settings.
	st2, err := store.OpenStore(path)
	require.NoError(t, err)
	defer st2.Close()
	got, err = Load(ctx, st2)
	require.NoError(t, err)
	assert.Equal(t, want, got)

	want.Speed, want.Device = SpeedFast, ""
	require.NoError(t, Save(ctx, st2, want))
	got, err = Load(ctx, st2)
	require.NoError(t, err)
	assert.Equal(t, want, got, "a later save replaces the earlier one")
}

func TestSaveRefusesBadSettingsAndKeepsTheStoredOnes(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	good := Settings{Speed: SpeedFast}
	require.NoError(t, Save(ctx, st, good))
	err := Save(ctx, st, Settings{Speed: "turbo"})
	var se *Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, "speed", se.Field)
	assert.Contains(t, se.Message, "fast, balanced or low-vram")
	got, err := Load(ctx, st)
	require.NoError(t, err)
	assert.Equal(t, good, got)
}

func TestLoadSaysWhenTheStoredValueIsDamaged(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	require.NoError(t, st.SetSetting(ctx, Key, "{not json"))
	got, err := Load(ctx, st)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "the defaults are used")
	assert.Equal(t, Settings{}, got)
}

func TestCheckDevice(t *testing.T) {
	twoGPUs := []protocol.Device{{Name: "GPU A", Kind: "cuda"}, {Name: "GPU B", Kind: "cuda"}, {Name: "Xeon", Kind: "cpu"}}
	cpuOnly := []protocol.Device{{Name: "Xeon", Kind: "cpu"}}
	for _, ok := range []string{"", "auto", "cpu", "cuda", "cuda:0", "cuda:1"} {
		assert.NoError(t, CheckDevice(ok, twoGPUs), ok)
	}
	for _, ok := range []string{"mps", "cuda:7"} {
		assert.NoError(t, CheckDevice(ok, nil), "%s: without a worker's list only the form is checked", ok)
	}
	cases := []struct {
		dev     string
		devices []protocol.Device
		says    string
	}{
		{"cuda:2", twoGPUs, "found 2 CUDA GPU(s), cuda:0, cuda:1 (numbered as nvidia-smi numbers them)"},
		{"cuda", cpuOnly, "has no cuda device (it found cpu (Xeon))"},
		{"mps", twoGPUs, "has no mps device"},
		{"gpu", nil, "is not a device"},
		{"cuda:x", nil, "cuda:N (N a number from 0)"},
		{"cuda:01", nil, "is not a device"},
		{"cpu:0", nil, "is not a device"},
	}
	for _, c := range cases {
		err := CheckDevice(c.dev, c.devices)
		var se *Error
		require.ErrorAs(t, err, &se, c.dev)
		assert.Equal(t, "device", se.Field)
		assert.Contains(t, se.Message, c.says, c.dev)
	}
	assert.Equal(t, []string{"", "cuda:0", "cuda:1", "cpu"}, DeviceChoices(twoGPUs))
	assert.Equal(t, []string{"", "mps", "cpu"}, DeviceChoices([]protocol.Device{{Kind: "mps"}, {Kind: "cpu"}}))
}

// cuda:N is nvidia-smi's N: a worker that sees only the GPUs 2 and 5
// (CUDA_VISIBLE_DEVICES=2,5) offers and accepts cuda:2 and cuda:5, not cuda:0.
func TestCUDAIndexIsNvidiaSmisNumber(t *testing.T) {
	twoGPUs := []protocol.Device{{Name: "GPU A", Kind: "cuda"}, {Name: "GPU B", Kind: "cuda"}, {Name: "Xeon", Kind: "cpu"}}
	t.Setenv("CUDA_VISIBLE_DEVICES", "2,5")
	assert.Equal(t, []string{"2", "5"}, []string{CUDAIndex(0), CUDAIndex(1)})
	assert.Equal(t, []string{"", "cuda:2", "cuda:5", "cpu"}, DeviceChoices(twoGPUs))
	assert.NoError(t, CheckDevice("cuda:5", twoGPUs))
	err := CheckDevice("cuda:0", twoGPUs)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "the worker has no cuda:0: it found 2 CUDA GPU(s), cuda:2, cuda:5")

	t.Setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2a,GPU-77c1")
	assert.Equal(t, []string{"", "cuda:0", "cuda:1", "cpu"}, DeviceChoices(twoGPUs), "by UUID: the place in the list, as the queue's slots")
}

func TestCheckFolders(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a.txt")
	require.NoError(t, os.WriteFile(file, []byte("x"), 0o644))
	assert.NoError(t, Settings{OutputFolder: dir}.Check(nil))

	for _, c := range []struct{ folder, says string }{
		{filepath.Join(dir, "missing"), "does not exist"},
		{file, "is a file, not a folder"},
		{"relative/out", "is not an absolute path"},
	} {
		err := Settings{OutputFolder: c.folder}.Check(nil)
		var se *Error
		require.ErrorAs(t, err, &se, c.folder)
		assert.Equal(t, "output_folder", se.Field)
		assert.Contains(t, se.Message, c.says)
	}
	if os.Geteuid() != 0 { // root writes anywhere
		ro := filepath.Join(dir, "ro")
		require.NoError(t, os.Mkdir(ro, 0o555))
		err := Settings{OutputFolder: ro}.Check(nil)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "cannot be written")
	}
	err := Settings{Python: "python3"}.Check(nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not an absolute path")
	err = Settings{RayAddress: "head :6379"}.Check(nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ray_address")
}

// env is an environment for Resolve.
func env(kv map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := kv[k]; return v, ok }
}

func TestResolveOrderEnvFlagStoredDefault(t *testing.T) {
	stored := Settings{Device: "cuda:1", Speed: SpeedLowVRAM, Python: "/stored/python"}

	// Nothing anywhere: the defaults, and nothing added to the worker's environment.
	w := Resolve(Settings{}, Flags{}, env(nil))
	assert.Equal(t, "", w.Device)
	assert.Equal(t, FromDefault, w.DeviceFrom)
	assert.Equal(t, SpeedBalanced, w.Speed)
	assert.Equal(t, FromDefault, w.SpeedFrom)
	assert.Empty(t, w.Env, "balanced is the worker's own defaults")
	assert.Equal(t, "", w.Python)

	// Stored only.
	w = Resolve(stored, Flags{}, env(nil))
	assert.Equal(t, "cuda:1", w.Device)
	assert.Equal(t, FromStored, w.DeviceFrom)
	assert.Equal(t, SpeedLowVRAM, w.Speed)
	assert.Equal(t, FromStored, w.SpeedFrom)
	assert.Contains(t, w.Env, "ATELIER_DEVICE=cuda:1")
	assert.Contains(t, w.Env, "ATELIER_OFFLOAD=model")
	assert.Equal(t, "/stored/python", w.Python)
	assert.Equal(t, FromStored, w.PythonFrom)

	// A flag beats the stored value.
	w = Resolve(stored, Flags{Device: "cpu", Speed: SpeedFast}, env(nil))
	assert.Equal(t, "cpu", w.Device)
	assert.Equal(t, FromFlag, w.DeviceFrom)
	assert.Equal(t, SpeedFast, w.Speed)
	assert.Equal(t, FromFlag, w.SpeedFrom)
	assert.Contains(t, w.Env, "ATELIER_DEVICE=cpu")
	assert.Contains(t, w.Env, "ATELIER_COMPILE=full")
	assert.NotContains(t, w.Env, "ATELIER_OFFLOAD=model")

	// The environment beats both, variable by variable.
	w = Resolve(stored, Flags{Device: "cpu", Speed: SpeedFast}, env(map[string]string{
		"ATELIER_DEVICE": "mps", "ATELIER_COMPILE": "off", "ATELIER_PYTHON": "/env/python"}))
	assert.Equal(t, "mps", w.Device)
	assert.Equal(t, FromEnv, w.DeviceFrom)
	for _, kv := range w.Env {
		assert.NotRegexp(t, `^ATELIER_(DEVICE|COMPILE)=`, kv, "a variable of the environment is left to it")
	}
	assert.Contains(t, w.Env, "ATELIER_COMPILE_MODE=reduce-overhead", "the mode still sets the others")
	assert.Equal(t, "", w.Python, "ATELIER_PYTHON is read by the bridge itself")
	assert.Equal(t, FromEnv, w.PythonFrom)

	// --device auto asks for the worker's own choice over a stored device.
	w = Resolve(stored, Flags{Device: DeviceAuto}, env(nil))
	assert.Equal(t, "", w.Device)
	assert.Equal(t, FromFlag, w.DeviceFrom)
	for _, kv := range w.Env {
		assert.NotRegexp(t, `^ATELIER_DEVICE=`, kv)
	}

	// An empty variable counts as unset, as the worker reads it.
	w = Resolve(stored, Flags{}, env(map[string]string{"ATELIER_DEVICE": ""}))
	assert.Equal(t, FromStored, w.DeviceFrom)
}

func TestEverySpeedModeDecidesEverySpeedVariable(t *testing.T) {
	for _, m := range Speeds {
		if m == SpeedBalanced {
			assert.Empty(t, speedModes[m], "balanced leaves every variable to the worker")
			continue
		}
		for _, v := range SpeedVars {
			_, ok := speedModes[m][v]
			assert.True(t, ok, "%s does not say what %s is", m, v)
		}
		assert.Len(t, speedModes[m], len(SpeedVars), "%s sets a variable SpeedVars does not list", m)
	}
}

// notModeVars are the worker's variables that no speed mode decides: where it
// runs, what it logs, its protocol, and the precision and PNG settings, which
// change the pixels or files rather than the speed.
var notModeVars = map[string]bool{
	"ATELIER_CACHE_DIR": true, "ATELIER_DEVICE": true, "ATELIER_DTYPE": true, "ATELIER_LOG_LEVEL": true,
	"ATELIER_PARENT_PID": true, "ATELIER_HEARTBEAT_INTERVAL_S": true, "ATELIER_TEST_STEP_DELAY_S": true,
	"ATELIER_PNG_COMPRESS": true, "ATELIER_DOWNLOAD_RESERVE_BYTES": true, "ATELIER_HOME": true,
	// The fast path's artefact store (where, how much) and its own restart marker.
	"ATELIER_FAST_DIR": true, "ATELIER_FAST_CACHE_COUNT": true, "ATELIER_FAST_CACHE_GB": true,
	"ATELIER_PRELOADED": true,
}

// TestSpeedVarsAreEveryVariableTheWorkerReads reads the worker's source, so that a
// new speed variable of the worker cannot be forgotten by the modes.
func TestSpeedVarsAreEveryVariableTheWorkerReads(t *testing.T) {
	root := filepath.Join("..", "..", "python", "atelier_worker")
	re := regexp.MustCompile(`ATELIER_[A-Z0-9_]+`)
	read := map[string]bool{}
	require.NoError(t, filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".py") || strings.HasPrefix(d.Name(), "bench") {
			return err
		}
		b, err := os.ReadFile(path)
		for _, m := range re.FindAllString(string(b), -1) {
			read[m] = true
		}
		return err
	}))
	require.Contains(t, read, "ATELIER_COMPILE", "the worker's source was not found")
	for v := range read {
		if !notModeVars[v] {
			assert.Contains(t, SpeedVars, v, "the worker reads %s: add it to SpeedVars and say what each mode sets", v)
		}
	}
	for _, v := range SpeedVars {
		assert.True(t, read[v], "%s is in SpeedVars but the worker does not read it", v)
	}
}

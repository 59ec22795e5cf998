package setup

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"atelier/core/setup/wheeltest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func workerFS(version string) fstest.MapFS {
	return fstest.MapFS{
		"atelier_worker/__init__.py": {Data: []byte("__version__ = '" + version + "'\n")},
		"atelier_worker/__main__.py": {Data: []byte("print('hi')\n")},
		"requirements.txt":           {Data: []byte("atelier-tiny-dep==1.0\n")},
	}
}

func TestUnpackWorkerIsVersionedAndRemovesOldCopies(t *testing.T) {
	l := Layout{Data: t.TempDir()}
	dir1, err := UnpackWorker(l, workerFS("1"))
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(dir1, "atelier_worker", "__init__.py"))
	require.NoError(t, err)
	assert.Equal(t, "__version__ = '1'\n", string(b))
	require.FileExists(t, filepath.Join(dir1, "requirements.txt"))

	again, err := UnpackWorker(l, workerFS("1"))
	require.NoError(t, err)
	assert.Equal(t, dir1, again, "the same content unpacks to the same folder")

	dir2, err := UnpackWorker(l, workerFS("2"))
	require.NoError(t, err)
	assert.NotEqual(t, dir1, dir2, "an upgrade unpacks into a new folder")
	assert.NoDirExists(t, dir1, "the old version's copy is removed")
	entries, err := os.ReadDir(l.WorkerRoot())
	require.NoError(t, err)
	require.Len(t, entries, 1)
	assert.Equal(t, filepath.Base(dir2), entries[0].Name())
}

func TestUnpackWorkerRefusesABinaryWithoutItsCode(t *testing.T) {
	_, err := UnpackWorker(Layout{Data: t.TempDir()}, fstest.MapFS{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "carries no worker code")
}

func TestANamedPythonThatIsMissingIsSaid(t *testing.T) {
	_, err := FindPython(context.Background(), filepath.Join(t.TempDir(), "python3.11"))
	var serr *Error
	require.ErrorAs(t, err, &serr)
	assert.Equal(t, NoPython, serr.Kind)
	assert.Contains(t, serr.Message, "does not exist")
}

func TestNoPythonOnPathSaysWhatToInstall(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := FindPython(context.Background(), "")
	var serr *Error
	require.ErrorAs(t, err, &serr)
	assert.Equal(t, NoPython, serr.Kind)
	assert.Contains(t, serr.Todo, "apt install python3.11 python3.11-venv")
}

// hostPython skips a test that builds a real venv where this machine has no
// suitable Python (the CI machine has one: make sysdeps installs it).
func hostPython(t *testing.T) Python {
	t.Helper()
	py, err := FindPython(context.Background(), "")
	if err != nil {
		t.Skipf("no Python 3.10–3.12 with venv here: %v", err)
	}
	return py
}

func TestInstallFromAWheelFolder(t *testing.T) {
	py := hostPython(t)
	wheels := t.TempDir()
	req, err := wheeltest.Write(wheels)
	require.NoError(t, err)
	l := Layout{Data: t.TempDir()}
	stale := filepath.Join(l.VenvRoot(), "0123456789ab")
	require.NoError(t, os.MkdirAll(stale, 0o755))

	before, err := Inspect(l, req)
	require.NoError(t, err)
	assert.False(t, before.Ready)
	assert.Equal(t, []string{stale}, before.Stale, "a venv of other requirements is an upgrade's leftover")

	var steps []Progress
	st, err := Install(context.Background(), l, Options{Python: py.Path, Requirements: req, FindLinks: wheels,
		Progress: func(p Progress) { steps = append(steps, p) }})
	require.NoError(t, err)
	assert.True(t, st.Ready)
	assert.Empty(t, st.Stale)
	assert.NoDirExists(t, stale, "the old venv is removed once the new one is ready")

	out, err := exec.Command(st.Python, "-c", "import "+wheeltest.Package+" as m; print(m.VALUE)").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Equal(t, "42", strings.TrimSpace(string(out)))

	var stages []string
	last := -1.0
	for _, p := range steps {
		assert.GreaterOrEqual(t, p.Fraction, last, "progress never goes back (%+v)", p)
		last = p.Fraction
		if len(stages) == 0 || stages[len(stages)-1] != p.Stage {
			stages = append(stages, p.Stage)
		}
	}
	assert.Equal(t, []string{"python", "venv", "download", "install", "done"}, stages)
	assert.Equal(t, 1.0, last)

	again, err := Inspect(l, req)
	require.NoError(t, err)
	assert.True(t, again.Ready)
}

func TestInstallWithoutNetworkSaysSo(t *testing.T) {
	py := hostPython(t)
	dir := t.TempDir()
	req, err := wheeltest.Write(dir)
	require.NoError(t, err)
	// Nothing listens on port 1 of the loopback: pip's connection is refused
	// as without network. One retry, so that pip says why it retries
	// (without any it prints only "no matching distribution").
	t.Setenv("PIP_RETRIES", "1")
	_, err = Install(context.Background(), Layout{Data: t.TempDir()},
		Options{Python: py.Path, Requirements: req, IndexURL: "http://127.0.0.1:1/simple"})
	var serr *Error
	require.ErrorAs(t, err, &serr)
	assert.Equal(t, NoNetwork, serr.Kind, "%s\n%s", serr.Message, serr.Detail)
	assert.Contains(t, serr.Message, "no network")
	assert.Contains(t, serr.Todo, "--find-links")
	assert.Contains(t, serr.Todo, IndexEnv)
}

func TestInstallChecksTheDiskFirst(t *testing.T) {
	py := hostPython(t)
	dir := t.TempDir()
	req, err := wheeltest.Write(dir)
	require.NoError(t, err)
	l := Layout{Data: t.TempDir()}
	_, err = Install(context.Background(), l, Options{Python: py.Path, Requirements: req, FindLinks: dir, NeedBytes: 1 << 60})
	var serr *Error
	require.True(t, errors.As(err, &serr), "%v", err)
	assert.Equal(t, NoDisk, serr.Kind)
	assert.Contains(t, serr.Message, "not enough disk space")
	st, err := Inspect(l, req)
	require.NoError(t, err)
	assert.NoDirExists(t, st.Venv, "nothing is created when the disk is too small")
}

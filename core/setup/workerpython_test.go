package setup

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// workerPython is the venv's python that make test names in ATELIER_PYTHON.
func workerPython(t *testing.T) string {
	t.Helper()
	p := os.Getenv("ATELIER_PYTHON")
	if p == "" {
		if testing.Short() {
			t.Skip("-short: no worker python")
		}
		t.Fatal("ATELIER_PYTHON must name the venv's python (make test sets it)")
	}
	return p
}

func TestCheckWorkerPythonAcceptsTheWorkersVenv(t *testing.T) {
	py := workerPython(t)
	reqs := filepath.Join("..", "..", "python", "requirements.txt")
	got, notes, err := CheckWorkerPython(context.Background(), py, reqs)
	require.NoError(t, err)
	assert.Equal(t, py, got.Path)
	assert.Regexp(t, `^3\.1[0-2]\.\d+$`, got.Version)
	assert.Empty(t, notes, "make venv installs exactly the pins")
}

func TestCheckWorkerPythonNamesWhatIsMissingOrDifferent(t *testing.T) {
	py := workerPython(t)
	dir := t.TempDir()
	reqs := filepath.Join(dir, "requirements.txt")
	require.NoError(t, os.WriteFile(reqs, []byte("# pins\ntorch==0.0.1\natelier-no-such-package==1.0\n\n"), 0o644))
	_, notes, err := CheckWorkerPython(context.Background(), py, reqs)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "lacks the worker's atelier-no-such-package")
	assert.Contains(t, err.Error(), "pip install -r requirements.txt")
	require.Len(t, notes, 1)
	assert.Contains(t, notes[0], "the worker is tested with 0.0.1")
}

func TestCheckWorkerPythonRefusesWhatIsNoSuitablePython(t *testing.T) {
	dir := t.TempDir()
	reqs := filepath.Join(dir, "requirements.txt")
	require.NoError(t, os.WriteFile(reqs, []byte("torch==2.11.0\n"), 0o644))
	// A stand-in for an old Python: it answers the probe as 3.9 would.
	old := filepath.Join(dir, "python3.9")
	require.NoError(t, os.WriteFile(old, []byte("#!/bin/sh\necho 3.9.18\n"), 0o755))
	notPython := filepath.Join(dir, "notes.txt")
	require.NoError(t, os.WriteFile(notPython, []byte("hello"), 0o644))

	for _, c := range []struct{ path, says string }{
		{old, "is Python 3.9.18, not 3.10–3.12"},
		{filepath.Join(dir, "missing", "python"), "does not exist"},
		{dir, "is a folder"},
		{notPython, "is not a Python that runs"},
		{"python3", "is not an absolute path"},
	} {
		_, _, err := CheckWorkerPython(context.Background(), c.path, reqs)
		require.Error(t, err, c.path)
		assert.Contains(t, err.Error(), c.says, c.path)
	}
}

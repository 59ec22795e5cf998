package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/setup/wheeltest"
)

// installedEnv is the environment of an installed Atelier: no worker named,
// so the binary uses the code it carries and set-up's venv.
func installedEnv(h *home, extra ...string) []string {
	var env []string
	for _, kv := range h.env() {
		if strings.HasPrefix(kv, "ATELIER_PYTHON=") || strings.HasPrefix(kv, "ATELIER_WORKER_DIR=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

func runWith(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(atelierBin, args...)
	cmd.Env = env
	cmd.Dir = t.TempDir() // outside the clone
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		exit, ok := err.(*exec.ExitError)
		require.True(t, ok, "run atelier %v: %v", args, err)
		code = exit.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

func TestDoctorAndSetupOfAnInstalledBinary(t *testing.T) {
	h := newHome(t)
	env := installedEnv(h)

	out, _, code := runWith(t, env, "doctor")
	assert.Equal(t, exitFailure, code)
	workerRoot := filepath.Join(h.dir, "data", "worker")
	assert.Contains(t, out, "code:    "+workerRoot, "the binary unpacks the worker it carries into the data folder")
	assert.Contains(t, out, "not set up")
	assert.Contains(t, out, "atelier setup")
	entries, err := os.ReadDir(workerRoot)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.FileExists(t, filepath.Join(workerRoot, entries[0].Name(), "atelier_worker", "__main__.py"))
	require.FileExists(t, filepath.Join(workerRoot, entries[0].Name(), "requirements.txt"))

	wheels := t.TempDir()
	req, err := wheeltest.Write(wheels)
	require.NoError(t, err)
	out, errOut, code := runWith(t, env, "setup", "--requirements", req, "--find-links", wheels)
	require.Equal(t, exitOK, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	assert.Contains(t, out, "Set up: "+filepath.Join(h.dir, "data", "venv"))
	assert.Contains(t, errOut, "100%", "the progress ends at 100%")

	out, _, code = runWith(t, env, "setup", "--requirements", req, "--find-links", wheels)
	assert.Equal(t, exitOK, code)
	assert.Contains(t, out, "set up already")

	out, errOut, code = runWith(t, env, "setup", "--requirements", req, "--find-links", wheels, "--force")
	require.Equal(t, exitOK, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	assert.Contains(t, out, "Set up: ", "--force builds the venv again")
}

func TestSetupWithoutPythonSaysWhatToInstall(t *testing.T) {
	h := newHome(t)
	_, errOut, code := runWith(t, installedEnv(h), "setup", "--python", filepath.Join(t.TempDir(), "python3.11"))
	assert.Equal(t, exitFailure, code)
	assert.Contains(t, errOut, "does not exist")
	assert.Contains(t, errOut, "what to do:")
}

// TestTheCarriedWorkerGenerates runs the worker from the code the binary
// carries (no ATELIER_WORKER_DIR, run outside the clone) in the dev venv.
func TestTheCarriedWorkerGenerates(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	env := installedEnv(h, "ATELIER_PYTHON="+os.Getenv("ATELIER_PYTHON"))
	out, errOut, code := runWith(t, env, tinyArgs...)
	require.Equal(t, exitOK, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
	images := strings.Fields(out)
	require.Len(t, images, 1, out)
	assert.FileExists(t, images[0])
	assert.True(t, strings.HasPrefix(images[0], h.dir), "%s is in the test's home", images[0])
}

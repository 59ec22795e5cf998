// Package hubtest starts the repository's stand-in for the Hugging Face hub
// (python/tests/hubserver.py) serving the tiny model in SDXL base's layout,
// for tests of the model download. It needs ATELIER_PYTHON and
// ATELIER_WORKER_DIR, as the worker's tests do.
package hubtest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Start builds a tiny model and serves it; it returns the server's URL (for
// HF_ENDPOINT). The server stops when the test ends.
func Start(t testing.TB) string {
	t.Helper()
	python, dir := os.Getenv("ATELIER_PYTHON"), os.Getenv("ATELIER_WORKER_DIR")
	if python == "" || dir == "" {
		t.Fatal("ATELIER_PYTHON and ATELIER_WORKER_DIR must name the venv's python and the repository's python folder (`make test-go` sets both)")
	}
	model := filepath.Join(t.TempDir(), "tiny")
	build := exec.Command(python, "-m", "atelier_worker.tiny", "--out", model)
	build.Env = append(os.Environ(), "PYTHONPATH="+dir)
	out, err := build.CombinedOutput()
	require.NoError(t, err, "build the tiny model: %s", out)
	srv := exec.Command(python, filepath.Join(dir, "tests", "hubserver.py"), "--model", model)
	srv.Env = append(os.Environ(), "PYTHONPATH="+dir)
	srv.Stderr = os.Stderr
	stdin, err := srv.StdinPipe()
	require.NoError(t, err)
	stdout, err := srv.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, srv.Start())
	t.Cleanup(func() {
		stdin.Close() // the server stops when its stdin closes
		_ = srv.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err, "the stand-in hub did not start")
	return strings.TrimSpace(line)
}

// Env is the environment a download against url needs: the endpoint, a
// private HF_HOME (no token of the user's), and never the hub's offline mode.
func Env(t testing.TB, url string) []string {
	return []string{"HF_ENDPOINT=" + url, "HF_HOME=" + t.TempDir(), "HF_HUB_OFFLINE=0", "HF_HUB_DISABLE_TELEMETRY=1",
		"HF_HUB_DOWNLOAD_TIMEOUT=600"}
}

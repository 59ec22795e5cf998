package bridge

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestWorkerDiesWithItsParent kills a stand-in for the app with SIGKILL, which runs no
// Close, and checks that its worker dies too (Pdeathsig). The "deaf" fake ignores its
// closed stdin, so nothing else would end it.
func TestWorkerDiesWithItsParent(t *testing.T) {
	modeFile := filepath.Join(t.TempDir(), "mode")
	require.NoError(t, os.WriteFile(modeFile, []byte("mode=deaf"), 0o644))
	exe, err := os.Executable()
	require.NoError(t, err)
	parent := exec.Command(exe)
	parent.Env = append(os.Environ(), fakeParentEnv+"="+modeFile)
	parent.Stderr = os.Stderr
	out, err := parent.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, parent.Start())
	t.Cleanup(func() { parent.Process.Kill(); parent.Wait() })

	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err, "the stand-in app prints its worker's pid")
	workerPID, err := strconv.Atoi(strings.TrimSpace(line))
	require.NoError(t, err)
	require.True(t, alive(workerPID), "the worker runs")

	require.NoError(t, parent.Process.Kill())
	_ = parent.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for alive(workerPID) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	require.False(t, alive(workerPID), "worker %d outlived its parent", workerPID)
}

// alive reports whether pid runs; an orphan's zombie, waiting for init to reap it,
// does not count.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

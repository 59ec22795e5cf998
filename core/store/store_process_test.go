//go:build unix

package store

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"atelier/core/protocol"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// storeHelperEnv switches this test binary into a helper process (see
// TestStoreHelperProcess) for the tests that need a second process to die.
// It is a test function rather than TestMain so that other files of the
// package stay free to define their own TestMain.
const storeHelperEnv = "ATELIER_STORE_HELPER"

// TestStoreHelperProcess is not a test: the tests below start this binary
// again with storeHelperEnv set, and it then plays a second Atelier process.
func TestStoreHelperProcess(t *testing.T) {
	mode := os.Getenv(storeHelperEnv)
	if mode == "" {
		t.Skip("helper process for the crash tests")
	}
	path := os.Getenv(storeHelperEnv + "_DB")
	s, err := OpenStore(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	ctx := context.Background()
	switch mode {
	case "write-forever":
		// Print each uid only once its commit has returned: the parent then
		// knows exactly what must survive a kill.
		for i := 0; ; i++ {
			uid := fmt.Sprintf("crash-%06d", i)
			id, err := s.CreateJob(ctx, uid, sampleRequest(fmt.Sprintf("prompt %d", i)))
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(3)
			}
			if err := s.FinishJob(ctx, id, &protocol.Metrics{TotalS: 1}, []protocol.ImageResult{
				{Path: uid + "-a.png", Seed: 1, Width: 64, Height: 64},
				{Path: uid + "-b.png", Seed: 2, Width: 64, Height: 64},
			}); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(3)
			}
			fmt.Println("committed " + uid)
		}
	case "start-and-exit":
		// Leave a running job behind, as a crashed app would.
		if _, err := s.CreateJob(ctx, "orphan", sampleRequest("left running")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		fmt.Println("committed orphan")
		os.Exit(0)
	}
	os.Exit(4)
}

func helperCommand(t *testing.T, mode, db string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^TestStoreHelperProcess$")
	cmd.Env = append(os.Environ(), storeHelperEnv+"="+mode, storeHelperEnv+"_DB="+db)
	cmd.Stderr = os.Stderr
	return cmd
}

func TestKill9DuringWritesLosesNothingCommitted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "crash.db")
	// Create the schema first so that the helper spends its life writing jobs.
	s, err := OpenStore(path)
	require.NoError(t, err)
	require.NoError(t, s.Close())

	cmd := helperCommand(t, "write-forever", path)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())

	var committed []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if uid, ok := strings.CutPrefix(line, "committed "); ok {
			committed = append(committed, uid)
		}
		if len(committed) == 40 {
			// The helper is in the middle of its next write now (it loops
			// without pausing).
			require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
			break
		}
	}
	// Lines the helper wrote before it died are still in the pipe.
	for sc.Scan() {
		if uid, ok := strings.CutPrefix(sc.Text(), "committed "); ok {
			committed = append(committed, uid)
		}
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "the helper must have been killed, not exited")
	require.Equal(t, syscall.SIGKILL, exit.Sys().(syscall.WaitStatus).Signal())
	require.GreaterOrEqual(t, len(committed), 40)

	s, err = OpenStore(path)
	require.NoError(t, err)
	defer s.Close()
	var integrity string
	require.NoError(t, s.db.QueryRow(`PRAGMA integrity_check`).Scan(&integrity))
	assert.Equal(t, "ok", integrity)

	ctx := context.Background()
	for _, uid := range committed {
		j, err := s.GetJobByUID(ctx, uid)
		if assert.NoError(t, err, "committed job %s lost", uid) {
			assert.Equal(t, StatusDone, j.Status, uid)
			assert.Len(t, j.Images, 2, uid)
		}
	}
	// The job the helper was writing when it died, if its row made it,
	// belongs to a dead process.
	var running int
	require.NoError(t, s.db.QueryRow(`SELECT COUNT(*) FROM jobs WHERE status = 'running'`).Scan(&running))
	assert.Zero(t, running)
}

func TestOpenMarksJobsOfDeadProcessesInterrupted(t *testing.T) {
	s, path := openTestStore(t)
	ctx := context.Background()
	liveID, err := s.CreateJob(ctx, "live", sampleRequest("still running here"))
	require.NoError(t, err)

	cmd := helperCommand(t, "start-and-exit", path)
	outBytes, err := cmd.Output()
	require.NoError(t, err)
	require.Contains(t, string(outBytes), "committed orphan")

	// A job recorded under this process's pid but another start time: the
	// pid was reused, so its owner is gone.
	if _, start, ok := procStat(os.Getpid()); ok {
		reusedID, err := s.CreateJob(ctx, "reused-pid", sampleRequest("old owner"))
		require.NoError(t, err)
		_, err = s.db.Exec(`UPDATE jobs SET owner_start = ? WHERE id = ?`, start+1, reusedID)
		require.NoError(t, err)
	}

	s2, err := OpenStore(path)
	require.NoError(t, err)
	defer s2.Close()

	orphan, err := s2.GetJobByUID(ctx, "orphan")
	require.NoError(t, err)
	assert.Equal(t, StatusInterrupted, orphan.Status)
	assert.NotNil(t, orphan.FinishedAt)
	assert.Contains(t, orphan.ErrorMessage, "run it again")

	live, err := s2.GetJob(ctx, liveID)
	require.NoError(t, err)
	assert.Equal(t, StatusRunning, live.Status, "a live process's job must never be marked interrupted")

	if j, err := s2.GetJobByUID(ctx, "reused-pid"); err == nil {
		assert.Equal(t, StatusInterrupted, j.Status)
	}

	// The live job can still finish normally.
	require.NoError(t, s.FinishJob(ctx, liveID, &protocol.Metrics{TotalS: 1}, nil))
}

func TestProcessAlive(t *testing.T) {
	pid, start := selfProcess()
	assert.True(t, processAlive(pid, start))
	assert.True(t, processAlive(pid, 0), "no start time recorded: trust the pid")
	assert.False(t, processAlive(0, 0))

	if _, _, ok := procStat(pid); !ok {
		t.Skip("no /proc: a zombie cannot be told from a live process here")
	}
	cmd := exec.Command("true")
	require.NoError(t, cmd.Start())
	// Before Wait the exited child is a zombie: it must count as dead.
	deadline := time.Now().Add(30 * time.Second)
	for processAlive(cmd.Process.Pid, 0) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	assert.False(t, processAlive(cmd.Process.Pid, 0))
	require.NoError(t, cmd.Wait())
	assert.False(t, processAlive(cmd.Process.Pid, 0))
}

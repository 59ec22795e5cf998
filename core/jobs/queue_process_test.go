//go:build unix

package jobs

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

	"atelier/core/failure"
	"atelier/core/store"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const queueHelperEnv = "ATELIER_QUEUE_HELPER"

// TestQueueHelperProcess is not a test: TestKill9MidQueueJob starts this
// binary again with queueHelperEnv set, and it then plays an Atelier process
// that claims the next queue job, says so, and works on it until killed.
func TestQueueHelperProcess(t *testing.T) {
	if os.Getenv(queueHelperEnv) == "" {
		t.Skip("helper process for the queue crash tests")
	}
	s, err := store.OpenStore(os.Getenv(queueHelperEnv + "_DB"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	j, err := s.ClaimNext(context.Background())
	if err != nil || j == nil {
		fmt.Fprintln(os.Stderr, "nothing claimed:", err)
		os.Exit(3)
	}
	fmt.Printf("claimed %d\n", j.ID)
	for step := 1; ; step++ {
		// Writes while it "works", so the kill lands between writes or in one.
		if err := s.SetJobProgress(context.Background(), j.ID, step%100, 100); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
	}
}

// claimAndKill starts a helper, waits until it has claimed a job, kills it
// with SIGKILL and returns the id of the job it held.
func claimAndKill(t *testing.T, db string) int64 {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^TestQueueHelperProcess$")
	cmd.Env = append(os.Environ(), queueHelperEnv+"=1", queueHelperEnv+"_DB="+db)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	sc := bufio.NewScanner(out)
	var id int64 = -1
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "claimed "); ok {
			_, err := fmt.Sscan(rest, &id)
			require.NoError(t, err)
			break
		}
	}
	require.NotEqual(t, int64(-1), id, "the helper claimed nothing")
	time.Sleep(50 * time.Millisecond) // let it write progress for a while
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	err = cmd.Wait()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	require.Equal(t, syscall.SIGKILL, exit.Sys().(syscall.WaitStatus).Signal())
	return id
}

func TestKill9MidQueueJobRequeuesOnceThenFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s, err := store.OpenStore(path)
	require.NoError(t, err)
	ctx := context.Background()
	ids := enqueue(t, s, 0, "first", "second")
	require.NoError(t, s.Close())

	// 1. The process running "first" dies: at the next open it is interrupted
	// and first in line again; "second" waits untouched.
	got := claimAndKill(t, path)
	require.Equal(t, ids[0], got)
	s, err = store.OpenStore(path)
	require.NoError(t, err)
	integrity, err := s.IntegrityCheck(ctx)
	require.NoError(t, err)
	assert.Equal(t, "ok", integrity)
	j, err := s.GetQueueJob(ctx, ids[0])
	require.NoError(t, err)
	assert.Equal(t, store.StatusInterrupted, j.Status)
	assert.Equal(t, 1, j.Attempts)
	assert.Equal(t, []string{"first", "second"}, waitingOrder(t, s))
	require.NoError(t, s.Close())

	// 2. It dies again on its second run: now it fails, so it cannot loop,
	// and the queue goes on with "second".
	got = claimAndKill(t, path)
	require.Equal(t, ids[0], got, "the interrupted job runs again, first")
	s, err = store.OpenStore(path)
	require.NoError(t, err)
	defer s.Close()
	integrity, err = s.IntegrityCheck(ctx)
	require.NoError(t, err)
	assert.Equal(t, "ok", integrity)
	j, err = s.GetQueueJob(ctx, ids[0])
	require.NoError(t, err)
	assert.Equal(t, store.StatusFailed, j.Status)
	assert.Equal(t, 2, j.Attempts)
	assert.Equal(t, string(failure.ErrWorkerCrashed), j.ErrorCode)
	assert.Contains(t, j.ErrorMessage, "not run again")
	assert.Equal(t, []string{"second"}, waitingOrder(t, s))
	next, err := s.ClaimNext(ctx)
	require.NoError(t, err)
	assert.Equal(t, ids[1], next.ID)
}

func TestQueueRunnerTakesOverAJobOfAProcessThatDied(t *testing.T) {
	qg := newQueueGen()
	r, s, paths := newTestRunner(t, qg.scripted())
	ids := enqueue(t, s, 0, "orphaned", "next")
	// Another process (a killed `atelier queue run`) held the first job
	// while this store stayed open.
	got := claimAndKill(t, paths.DB)
	require.Equal(t, ids[0], got)

	require.NoError(t, NewQueueRunner(r).Run(context.Background(), true))
	j, err := s.GetQueueJob(context.Background(), ids[0])
	require.NoError(t, err)
	assert.Equal(t, store.StatusDone, j.Status, "the running process notices the dead one without a restart")
	assert.Equal(t, 2, j.Attempts)
	assert.Equal(t, 1, qg.count("orphaned"))
	assert.Equal(t, 1, qg.count("next"))
}

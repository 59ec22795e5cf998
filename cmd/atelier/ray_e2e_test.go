//go:build linux

package main

// End-to-end test of `queue run --ray`: the real binary and bridge, the Ray proxy,
// a local Ray head (python/tests/raykit.py) whose actor runs the real worker engine
// on the tiny model, and one actor killed mid-job.

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/protocol"
	"atelier/core/store"
)

// rayKit runs python/tests/raykit.py with the worker's python.
func rayKit(ctx context.Context, args ...string) *exec.Cmd {
	kit := filepath.Join(os.Getenv("ATELIER_WORKER_DIR"), "tests", "raykit.py")
	cmd := exec.CommandContext(ctx, os.Getenv("ATELIER_PYTHON"), append([]string{kit}, args...)...)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+os.Getenv("ATELIER_WORKER_DIR"))
	return cmd
}

// startRayHead starts a local Ray head with two CPU slots and returns its
// address; the cluster is stopped when the test ends, whatever its outcome.
func startRayHead(t *testing.T) string {
	t.Helper()
	requireWorker(t)
	if err := exec.Command(os.Getenv("ATELIER_PYTHON"), "-c", "import ray").Run(); err != nil {
		t.Skip("Ray is not installed in the worker's venv: `make venv-ray` installs it (make test does)")
	}
	cmd := rayKit(context.Background(), "head")
	// The cluster's own cache: its actors make the tiny model there, as a cluster
	// node would in its user's cache.
	cmd.Env = append(cmd.Env, "ATELIER_CACHE_DIR="+t.TempDir())
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		// raykit stops the head (its whole process group) when its stdin closes.
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(3 * time.Minute):
			cmd.Process.Kill()
			<-done
			t.Errorf("the Ray head did not stop within 3 minutes")
		}
	})
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		addr <- strings.TrimSpace(line)
		io.Copy(io.Discard, stdout) //nolint:errcheck // only drains
	}()
	select {
	case a := <-addr:
		require.NotEmpty(t, a, "the Ray head did not start:\n%s", stderr.String())
		return a
	case <-time.After(5 * time.Minute):
		t.Fatalf("the Ray head did not start within 5 minutes:\n%s", stderr.String())
		return ""
	}
}

func TestQueueRunOnRayRecoversAKilledActor(t *testing.T) {
	addr := startRayHead(t)
	h := newHome(t)
	const n = 6
	ids := map[int64]bool{}
	for i := 0; i < n; i++ {
		// Enough steps that the kill below lands while a job denoises.
		ids[h.queueAdd("a lighthouse on ray", 120)] = true
	}
	require.Len(t, ids, n)

	r := startQueueRun(t, h, "--ray", addr)
	r.until(t, "a job denoising on the actor", func(e runEvent) bool {
		return e.Type == protocol.MsgProgress && e.Stage == "denoising" && e.Step >= 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, err := rayKit(ctx, "kill-busy", addr).CombinedOutput()
	require.NoError(t, err, "killing a busy actor: %s", out)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	killed := lines[len(lines)-1]
	t.Logf("killed the actor running job %s", killed)

	evs, code := r.rest(t)
	require.Equal(t, 0, code, "queue run --ray; stderr:\n%s", r.stderr)
	assert.Contains(t, r.stderr.String(), "Ray cluster at "+addr+": 0 GPU(s), 2 CPU(s); 2 actor(s) run the jobs")

	// The killed job went back to the queue as after a local crash, and ran again.
	var interrupted []runEvent
	for _, e := range evs {
		if e.Type == "job_finished" && e.Status == store.StatusInterrupted {
			interrupted = append(interrupted, e)
		}
	}
	require.Len(t, interrupted, 1, "one job was cut short by the lost actor; stderr:\n%s", r.stderr)
	require.NotNil(t, interrupted[0].Error)
	assert.Equal(t, string(failure.ErrWorkerCrashed), interrupted[0].Error.Code)
	assert.Contains(t, interrupted[0].Error.Detail, "was lost", "the crash's detail says the actor was lost")
	// The killed job, unless its result came back in the instant between the actor
	// saying it was busy and the kill: then the next job of that actor's slot met
	// the dead actor. Each slot is one actor at a time, so the order is a slot's.
	orders := map[string][]string{}
	slotOf := map[string]string{}
	for _, e := range append(r.seen, evs...) {
		if e.Type != "job_started" {
			continue
		}
		if o := orders[e.Slot]; len(o) == 0 || o[len(o)-1] != e.UID {
			orders[e.Slot] = append(o, e.UID)
		}
		if _, ok := slotOf[e.UID]; !ok {
			slotOf[e.UID] = e.Slot
		}
	}
	assert.Len(t, orders, 2, "both actors took jobs")
	hit := interrupted[0].UID
	if hit != killed {
		order := orders[slotOf[killed]]
		i := slices.Index(order, killed)
		require.True(t, i >= 0 && i+1 < len(order) && order[i+1] == hit,
			"job %s was interrupted, but the actor of job %s was killed (its slot's order %v)", hit, killed, order)
	}

	// Every job done exactly once, each with its one image in the local history.
	q := h.queue()
	attempts := 0
	for id := range ids {
		assert.Equal(t, store.StatusDone, q[id].Status, "job %d", id)
		attempts += q[id].Attempts
	}
	assert.Equal(t, n+1, attempts, "one re-run, for the job whose actor was killed")
	images := h.imagesOf()
	for id := range ids {
		assert.Equal(t, 1, images[id], "job %d has its image once", id)
	}
	files := h.images()
	assert.Len(t, files, n, "one PNG per job in the local images folder, none left over")
	for _, f := range files {
		assert.Contains(t, pngText(t, f)["parameters"], "a lighthouse on ray")
	}
	// Each job records where it ran: the actor's node and pid, and its device.
	pids := map[int]bool{}
	for _, j := range h.history() {
		require.NotNil(t, j.RanOn, "job %d records where it ran", j.ID)
		assert.Equal(t, "cpu", j.RanOn.Device, "job %d", j.ID)
		assert.NotEmpty(t, j.RanOn.Host, "job %d", j.ID)
		assert.Positive(t, j.RanOn.WorkerPID, "job %d", j.ID)
		pids[j.RanOn.WorkerPID] = true
	}
	assert.GreaterOrEqual(t, len(pids), 2, "two actors ran the jobs")
	h.checkIntegrity()

	// More actors than the cluster has room for would each hold a job while
	// waiting for a place: refused before any job starts.
	extra := h.queueAdd("waits for no actor", 4)
	_, stderr, code := h.run("queue", "run", "--ray", addr, "--workers", "3")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "room for 2 actor(s)")
	assert.Equal(t, store.StatusPending, h.queue()[extra].Status)
}

func TestQueueRunOnAnUnreachableRayClusterSaysSoAndKeepsTheJobs(t *testing.T) {
	requireWorker(t)
	if err := exec.Command(os.Getenv("ATELIER_PYTHON"), "-c", "import ray").Run(); err != nil {
		t.Skip("Ray is not installed in the worker's venv: `make venv-ray` installs it (make test does)")
	}
	h := newHome(t)
	id := h.queueAdd("never sent", 4)
	// A port nothing listens on: taken and closed again.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())

	_, stderr, code := h.run("queue", "run", "--ray", addr)
	assert.Equal(t, exitFailure, code)
	assert.Contains(t, stderr, "cannot use the Ray cluster at "+addr)
	assert.Contains(t, stderr, "The jobs stay queued")
	assert.Equal(t, store.StatusPending, h.queue()[id].Status)
}

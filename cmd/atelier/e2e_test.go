//go:build linux

package main

// End-to-end tests: the real binary, bridge, Python worker (tiny model) and
// history, each test with its own ATELIER_HOME.

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image"
	"image/draw"
	"image/png"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/protocol"
	"atelier/core/store"
)

var atelierBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "atelier-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	atelierBin = filepath.Join(dir, "atelier")
	gobin, err := exec.LookPath("go")
	if err != nil {
		// go test built this binary, so the root it was built under has the go command.
		//lint:ignore SA1019 only a fallback for a PATH without go
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	build := exec.Command(gobin, "build", "-tags", "sqlite_fts5", "-o", atelierBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building atelier for the end-to-end tests:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireWorker fails a test that needs the Python worker when the
// environment does not say where it is.
func requireWorker(t *testing.T) {
	t.Helper()
	if os.Getenv("ATELIER_PYTHON") == "" || os.Getenv("ATELIER_WORKER_DIR") == "" {
		t.Fatal("ATELIER_PYTHON and ATELIER_WORKER_DIR must name the venv's python and the repository's python " +
			"folder: run these tests with `make test-go` (it sets both), or export them yourself " +
			"(ATELIER_PYTHON=$(make -s print-python) ATELIER_WORKER_DIR=$PWD/python)")
	}
}

type home struct {
	t   *testing.T
	dir string
}

func newHome(t *testing.T) *home {
	return &home{t: t, dir: t.TempDir()}
}

func (h *home) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		// Each test keeps everything, the generated tiny model included, in
		// its own home.
		if strings.HasPrefix(kv, "ATELIER_HOME=") || strings.HasPrefix(kv, "ATELIER_CACHE_DIR=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "ATELIER_HOME="+h.dir)
}

func (h *home) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, atelierBin, args...)
	cmd.Env = h.env()
	return cmd
}

// run runs the CLI to the end and returns its stdout, stderr and exit status.
func (h *home) run(args ...string) (string, string, int) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := h.command(ctx, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		exit, ok := err.(*exec.ExitError)
		require.True(h.t, ok, "run atelier %v: %v", args, err)
		code = exit.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

func (h *home) history() []store.JobRecord {
	h.t.Helper()
	out, errOut, code := h.run("history", "--json", "--limit", "0")
	require.Equal(h.t, 0, code, errOut)
	var jobs []store.JobRecord
	require.NoError(h.t, json.Unmarshal([]byte(out), &jobs), out)
	return jobs
}

// files lists every file under the home's images folder.
func (h *home) images() []string {
	var files []string
	root := filepath.Join(h.dir, "data", "images")
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error { //nolint:errcheck // a missing root is no files
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	return files
}

var tinyArgs = []string{"generate", "--model", "tiny", "--prompt", "a lighthouse", "--steps", "4",
	"--width", "64", "--height", "64", "--seed", "7"}

func TestGenerateWritesAPNGAndRecordsTheJob(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	stdout, stderr, code := h.run(tinyArgs...)
	require.Equal(t, 0, code, "stderr:\n%s", stderr)

	assert.Contains(t, stderr, "starting the worker: launching Python", "the start is shown, not silent")
	assert.Regexp(t, `done in [0-9.]+s \(.*\); [0-9.]+s in all, the worker's start included`, stderr)

	paths := strings.Fields(stdout)
	require.Len(t, paths, 1, "stdout must be the image path: %q", stdout)
	path := paths[0]
	assert.True(t, strings.HasPrefix(path, filepath.Join(h.dir, "data", "images")+string(filepath.Separator)), path)
	params := pngText(t, path)["parameters"]
	assert.Contains(t, params, "a lighthouse")
	assert.Contains(t, params, "Steps: 4")
	assert.Contains(t, params, "Seed: 7")
	assert.Contains(t, stderr, "denoising", "progress goes to stderr")

	jobs := h.history()
	require.Len(t, jobs, 1)
	j := jobs[0]
	assert.Equal(t, store.StatusDone, j.Status)
	assert.Equal(t, "a lighthouse", j.Request.Prompt)
	assert.Equal(t, int64(7), j.Request.Seed)
	assert.Equal(t, 4, j.Request.Steps)
	require.NotNil(t, j.Metrics, "history --json must carry the metrics")
	assert.Positive(t, j.Metrics.TotalS)
	assert.Positive(t, j.Metrics.ItS)
	assert.NotEmpty(t, j.Metrics.Device)
	require.Len(t, j.Images, 1)
	assert.Equal(t, path, j.Images[0].Path)
	assert.Equal(t, 64, j.Images[0].Width)

	table, _, code := h.run("history")
	require.Equal(t, 0, code)
	assert.Contains(t, table, "done")
	assert.Contains(t, table, "a lighthouse")
}

func TestSameSeedGivesTheSamePixels(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	first, stderr, code := h.run(tinyArgs...)
	require.Equal(t, 0, code, stderr)

	outDir := filepath.Join(t.TempDir(), "copies")
	second, stderr, code := h.run(append(tinyArgs, "--out", outDir)...)
	require.Equal(t, 0, code, stderr)
	copyPath := strings.TrimSpace(second)
	assert.Equal(t, outDir, filepath.Dir(copyPath), "with --out, stdout names the copy")

	jobs := h.history()
	require.Len(t, jobs, 2)
	kept := jobs[0].Images[0].Path
	assert.FileExists(t, kept, "the history keeps its own copy")
	assert.NotEqual(t, strings.TrimSpace(first), kept)
	assert.Equal(t, readFile(t, kept), readFile(t, copyPath), "the copy is the same file")

	a, b := pixels(t, strings.TrimSpace(first)), pixels(t, copyPath)
	assert.True(t, bytes.Equal(a, b), "two runs with seed 7 must give identical pixels")

	other, stderr, code := h.run(append(append([]string{}, tinyArgs[:len(tinyArgs)-1]...), "8")...) // a copy: tinyArgs is shared
	require.Equal(t, 0, code, stderr)
	assert.False(t, bytes.Equal(a, pixels(t, strings.TrimSpace(other))), "another seed must give other pixels")
}

func TestInvalidInputIsRefusedWithoutARowOrAFile(t *testing.T) {
	models := t.TempDir()
	noUnet := filepath.Join(models, "sdxl-no-unet")
	require.NoError(t, os.MkdirAll(filepath.Join(noUnet, "vae"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(noUnet, "model_index.json"), []byte("{}"), 0o644))

	for _, tc := range []struct {
		name string
		args []string
		want []string // in stderr
	}{
		{"steps 0", []string{"--steps", "0"}, []string{"--steps", "between 1 and 150"}},
		{"width 63", []string{"--width", "63"}, []string{"--width", "multiple of 8"}},
		{"missing model", []string{"--model", filepath.Join(models, "nope")}, []string{"--model", "does not exist"}},
		{"model without unet", []string{"--model", noUnet}, []string{"--model", "unet/", "download the model again"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHome(t)
			args := append([]string{"generate", "--prompt", "a lighthouse", "--steps", "4", "--width", "64", "--height", "64"}, tc.args...)
			stdout, stderr, code := h.run(args...)
			assert.Equal(t, exitUsage, code, "stderr:\n%s", stderr)
			for _, w := range tc.want {
				assert.Contains(t, stderr, w)
			}
			assert.Empty(t, stdout)
			assert.Empty(t, h.history(), "invalid input must leave no job row")
			assert.Empty(t, h.images(), "invalid input must leave no file")
		})
	}
}

func TestJSONOutputIsWellFormedJSONLines(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	stdout, stderr, code := h.run(append(tinyArgs, "--json")...)
	require.Equal(t, 0, code, stderr)

	lines := strings.Split(strings.TrimRight(stdout, "\n"), "\n")
	require.GreaterOrEqual(t, len(lines), 3)
	var types []string
	var last map[string]any
	for i, line := range lines {
		var obj map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &obj), "line %d is not a JSON object: %q", i+1, line)
		typ, ok := obj["type"].(string)
		require.True(t, ok, "line %d has no type: %q", i+1, line)
		types = append(types, typ)
		last = obj
	}
	assert.Contains(t, types, protocol.MsgAccepted)
	assert.Contains(t, types, protocol.MsgProgress)
	assert.Contains(t, types, protocol.MsgResult)
	assert.Equal(t, "done", types[len(types)-1], "the last line is the done line")
	assert.Equal(t, true, last["ok"])
	uid, _ := last["uid"].(string)
	require.NotEmpty(t, uid)
	for i, line := range lines[:len(lines)-1] {
		m, err := protocol.Decode([]byte(line))
		require.NoError(t, err)
		assert.Equal(t, uid, protocol.IDOf(m), "line %d belongs to another job", i+1)
	}
	images, _ := last["images"].([]any)
	require.Len(t, images, 1)
	assert.FileExists(t, images[0].(map[string]any)["path"].(string))

	// A refused request still ends with a done line, naming the field.
	stdout, _, code = h.run("generate", "--prompt", "x", "--steps", "0", "--json")
	assert.Equal(t, exitUsage, code)
	var done doneLine
	require.NoError(t, json.Unmarshal([]byte(strings.TrimSpace(stdout)), &done), stdout)
	assert.False(t, done.OK)
	require.NotNil(t, done.Error)
	assert.Equal(t, "steps", done.Error.Field)
}

// liveJob starts a long generate with --json, in a process group of its own as a
// shell starts a foreground job, and returns once the worker is denoising, with the
// CLI's process, the worker's pid and the CLI's stdout lines still to come.
type liveJob struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	lines  chan string
	worker int
}

func startLongJob(t *testing.T, h *home) *liveJob {
	t.Helper()
	cmd := h.command(context.Background(), "generate", "--model", "tiny", "--prompt", "a long job",
		"--steps", "150", "--width", "64", "--height", "64", "--seed", "1", "--json")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	j := &liveJob{cmd: cmd, stderr: &bytes.Buffer{}, lines: make(chan string, 1024)}
	cmd.Stderr = j.stderr
	inOwnGroup(cmd)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		// Only this test's own CLI, by pid, if it still runs.
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			j.lines <- sc.Text()
		}
		close(j.lines)
	}()
	deadline := time.After(3 * time.Minute)
	for {
		select {
		case line, ok := <-j.lines:
			require.True(t, ok, "the CLI ended before denoising; stderr:\n%s", j.stderr)
			m, err := protocol.Decode([]byte(line))
			require.NoError(t, err, line)
			if p, ok := m.(protocol.Progress); ok && p.Stage == "denoising" && p.Step >= 1 {
				workers := workerPIDs(cmd.Process.Pid)
				require.Len(t, workers, 1, "the CLI must have one atelier_worker process")
				j.worker = workers[0]
				return j
			}
		case <-deadline:
			t.Fatalf("no denoising step within 3 minutes; stderr:\n%s", j.stderr)
		}
	}
}

// wait waits for the CLI to exit and returns its exit status and stdout.
func (j *liveJob) wait(t *testing.T) (int, []string) {
	t.Helper()
	var rest []string
	for line := range j.lines {
		rest = append(rest, line)
	}
	err := j.cmd.Wait()
	if err == nil {
		return 0, rest
	}
	exit, ok := err.(*exec.ExitError)
	require.True(t, ok, err)
	if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -int(ws.Signal()), rest
	}
	return exit.ExitCode(), rest
}

func TestWorkerKilledMidJobIsReportedAndTheNextJobWorks(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	j := startLongJob(t, h)
	require.NoError(t, syscall.Kill(j.worker, syscall.SIGKILL))

	code, _ := j.wait(t)
	assert.Equal(t, exitFailure, code)
	stderr := j.stderr.String()
	assert.Contains(t, stderr, string(failure.ErrWorkerCrashed))
	assert.Contains(t, stderr, "the worker's last lines on stderr:")
	// The tail holds the worker's own log lines, not just our message.
	tail := stderr[strings.Index(stderr, "the worker's last lines on stderr:"):]
	assert.GreaterOrEqual(t, strings.Count(tail, "\n"), 2, "expected stderr lines of the worker:\n%s", tail)

	jobs := h.history()
	require.Len(t, jobs, 1)
	assert.Equal(t, store.StatusFailed, jobs[0].Status)
	assert.Equal(t, string(failure.ErrWorkerCrashed), jobs[0].ErrorCode)

	_, errOut, code := h.run(tinyArgs...)
	assert.Equal(t, 0, code, "the next generate must succeed:\n%s", errOut)
}

func TestCLIKilledMidJobLeavesNoWorker(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	j := startLongJob(t, h)
	require.NoError(t, j.cmd.Process.Signal(syscall.SIGKILL))
	code, _ := j.wait(t)
	require.Equal(t, -int(syscall.SIGKILL), code)

	deadline := time.Now().Add(30 * time.Second)
	for processRuns(j.worker) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	assert.False(t, processRuns(j.worker), "the worker (pid %d) outlived the CLI by more than 30 s", j.worker)

	// The job of the dead CLI shows as interrupted at the next start.
	jobs := h.history()
	require.Len(t, jobs, 1)
	assert.Equal(t, store.StatusInterrupted, jobs[0].Status)
}

func TestSignalsCancelTheJob(t *testing.T) {
	requireWorker(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			h := newHome(t)
			j := startLongJob(t, h)
			require.NoError(t, j.cmd.Process.Signal(sig))
			code, rest := j.wait(t)
			assert.Equal(t, exitCancelled, code, "stderr:\n%s", j.stderr)
			require.NotEmpty(t, rest)
			var done doneLine
			require.NoError(t, json.Unmarshal([]byte(rest[len(rest)-1]), &done))
			require.NotNil(t, done.Error)
			assert.Equal(t, failure.ErrCancelled, done.Error.Code)

			jobs := h.history()
			require.Len(t, jobs, 1)
			assert.Equal(t, store.StatusCancelled, jobs[0].Status)
			assert.False(t, processRuns(j.worker), "the worker must be stopped when the CLI exits")
		})
	}
}

func TestDoctorReportsVersions(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	stdout, stderr, code := h.run("doctor")
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
	assert.Regexp(t, regexp.MustCompile(`(?m)^\s+torch:\s+\d+\.\d+`), stdout)
	assert.Regexp(t, regexp.MustCompile(`(?m)^\s+diffusers:\s+\d+\.\d+`), stdout)
	assert.Regexp(t, regexp.MustCompile(`(?m)^\s+transformers:\s+\d+\.\d+`), stdout)
	assert.Contains(t, stdout, "running on:")
}

func TestDoctorExplainsAMissingPython(t *testing.T) {
	h := newHome(t)
	cmd := h.command(context.Background(), "doctor")
	cmd.Env = append(cmd.Env, "ATELIER_PYTHON="+filepath.Join(t.TempDir(), "no-python"), "ATELIER_WORKER_DIR="+t.TempDir())
	out, err := cmd.Output()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	assert.Equal(t, exitFailure, exit.ExitCode())
	assert.Contains(t, string(out), "PROBLEM")
	assert.Contains(t, string(out), "make venv")
}

func TestHelpAndUsage(t *testing.T) {
	h := newHome(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--help"}, "atelier generate"},
		{[]string{"generate", "--help"}, "-prompt"},
		{[]string{"history", "--help"}, "-limit"},
		{[]string{"doctor", "--help"}, "Usage: atelier doctor"},
		{[]string{"version", "--help"}, "Usage: atelier version"},
	} {
		stdout, _, code := h.run(tc.args...)
		assert.Equal(t, 0, code, tc.args)
		assert.Contains(t, stdout, tc.want, tc.args)
	}
	_, stderr, code := h.run("paint")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, `unknown command "paint"`)
	_, stderr, code = h.run("generate", "--prompt", "x", "--stepz", "3")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "stepz")
	_, stderr, code = h.run("generate", "a", "lighthouse")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "--prompt")

	stdout, _, code := h.run("version")
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, "atelier "+version)
	assert.Empty(t, h.images())
}

// workerPIDs returns the atelier_worker processes below pid.
func workerPIDs(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, ok := parentPID(p); ok {
			children[ppid] = append(children[ppid], p)
		}
	}
	var found []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", c)); err == nil &&
				bytes.Contains(cmdline, []byte("atelier_worker")) {
				found = append(found, c)
			}
			queue = append(queue, c)
		}
	}
	return found
}

// procStatFields returns the fields of /proc/pid/stat after the command name.
func procStatFields(pid int) ([]string, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, false
	}
	return strings.Fields(string(b[i+1:])), true
}

func parentPID(pid int) (int, bool) {
	f, ok := procStatFields(pid)
	if !ok || len(f) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	return ppid, err == nil
}

// processRuns reports whether pid is a live process (a zombie has exited).
func processRuns(pid int) bool {
	f, ok := procStatFields(pid)
	return ok && len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// pixels decodes a PNG into RGBA bytes, so that files differing only in
// metadata compare equal.
func pixels(t *testing.T, path string) []byte {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(readFile(t, path)))
	require.NoError(t, err, path)
	rgba := image.NewRGBA(img.Bounds())
	draw.Draw(rgba, rgba.Bounds(), img, img.Bounds().Min, draw.Src)
	return rgba.Pix
}

// pngText returns a PNG's text chunks (tEXt, zTXt and iTXt) by keyword.
func pngText(t *testing.T, path string) map[string]string {
	t.Helper()
	b := readFile(t, path)
	require.True(t, bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")), "%s is not a PNG", path)
	out := map[string]string{}
	for r := b[8:]; len(r) >= 12; {
		n := binary.BigEndian.Uint32(r[:4])
		typ, data := string(r[4:8]), r[8:8+n]
		r = r[12+n:]
		key, rest, ok := bytes.Cut(data, []byte{0})
		if !ok {
			continue
		}
		switch typ {
		case "tEXt":
			out[string(key)] = string(rest)
		case "zTXt":
			out[string(key)] = inflate(t, rest[1:])
		case "iTXt":
			compressed := rest[0] == 1
			rest = rest[2:]
			_, rest, _ = bytes.Cut(rest, []byte{0}) // language
			_, rest, _ = bytes.Cut(rest, []byte{0}) // translated keyword
			if compressed {
				out[string(key)] = inflate(t, rest)
			} else {
				out[string(key)] = string(rest)
			}
		}
	}
	return out
}

func inflate(t *testing.T, b []byte) string {
	t.Helper()
	zr, err := zlib.NewReader(bytes.NewReader(b))
	require.NoError(t, err)
	s, err := io.ReadAll(zr)
	require.NoError(t, err)
	return string(s)
}

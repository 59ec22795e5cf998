//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/failure"
	"atelier/core/store"
)

// unshareMount returns the unshare flags that give a command a mount
// namespace of its own in which it may mount a tmpfs (root needs no user
// namespace), or why there are none.
func unshareMount(t *testing.T) ([]string, string) {
	t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		return nil, "unshare (util-linux) is not installed"
	}
	var tries [][]string
	if os.Geteuid() == 0 {
		tries = append(tries, []string{"-m"})
	}
	tries = append(tries, []string{"-r", "-m"}) // a user namespace where the user is root
	dir := t.TempDir()
	var why []string
	for _, flags := range tries {
		out, err := exec.Command("unshare", append(flags, "sh", "-c", `mount -t tmpfs -o size=64k tmpfs "$0"`, dir)...).CombinedOutput()
		if err == nil {
			return flags, ""
		}
		why = append(why, strings.Join(flags, " ")+": "+strings.TrimSpace(string(out))+" ("+err.Error()+")")
	}
	return nil, "cannot mount a tmpfs in a mount namespace of its own (not root, and no unprivileged user namespaces): " + strings.Join(why, "; ")
}

// A disk that fills up between a batch's first and second image: the job
// fails with disk_full (exit 1, not the bad-input 2), the history has it
// failed, no file of it stays on the disk, and the next job runs.
func TestAFullDiskMidBatchKeepsNoFileAndFailsTheJob(t *testing.T) {
	requireWorker(t)
	flags, why := unshareMount(t)
	if flags == nil {
		t.Skip(why)
	}
	h := newHome(t)
	batch := append(slices.Clone(tinyArgs), "--batch-size", "2")

	// The same job on a disk with room: the size of each of its PNGs.
	stdout, stderr, code := h.run(batch...)
	require.Equal(t, 0, code, stderr)
	made := strings.Fields(stdout)
	require.Len(t, made, 2)
	page := int64(os.Getpagesize())
	pages := func(p string) int64 {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		return (fi.Size() + page - 1) / page
	}
	// Room for the first image, and less than the second needs besides.
	size := (pages(made[0]) + pages(made[1]) - 1) * page

	// In a mount namespace of its own, a tmpfs of that size over the images
	// folder, seen only by the commands in it; what they print goes to files
	// outside it.
	images := filepath.Join(h.dir, "data", "images")
	logs := t.TempDir()
	script := `mount -t tmpfs -o size="$SIZE" tmpfs "$IMAGES" || exit 97
"$BIN" "$@" --batch-size 2 >"$LOGS/full.out" 2>"$LOGS/full.err"; echo $? >"$LOGS/full.rc"
find "$IMAGES" -type f >"$LOGS/full.ls"
"$BIN" "$@" >"$LOGS/next.out" 2>"$LOGS/next.err"; echo $? >"$LOGS/next.rc"
find "$IMAGES" -type f >"$LOGS/next.ls"`
	cmd := exec.Command("unshare", append(append(flags, "sh", "-c", script, "sh"), tinyArgs...)...)
	cmd.Env = append(h.env(), "SIZE="+strconv.FormatInt(size, 10), "IMAGES="+images, "LOGS="+logs, "BIN="+atelierBin)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	log := func(name string) string { return string(readFile(t, filepath.Join(logs, name))) }

	full := log("full.err")
	t.Logf("the CLI on the full disk:\n%s", full)
	assert.Equal(t, strconv.Itoa(exitFailure), strings.TrimSpace(log("full.rc")), "a full disk is a failed job, not bad input:\n%s", full)
	assert.Contains(t, full, "disk_full")
	assert.Contains(t, full, "the disk is full")
	assert.Contains(t, full, "image 2 of 2")
	assert.Contains(t, full, "the job needs about")
	assert.Contains(t, full, "Free some space")
	assert.NotContains(t, full, "invalid")
	assert.Empty(t, strings.TrimSpace(log("full.out")), "no image path is printed")
	assert.Empty(t, strings.TrimSpace(log("full.ls")), "no file of the failed job (nor a temporary one) is left on the full disk")

	assert.Equal(t, "0", strings.TrimSpace(log("next.rc")), "the next job runs: %s", log("next.err"))
	next := strings.TrimSpace(log("next.out"))
	assert.Equal(t, next, strings.TrimSpace(log("next.ls")), "the next job's image is the only file")

	jobs := h.history()
	require.Len(t, jobs, 3)
	var failed []store.JobRecord
	for _, j := range jobs {
		if j.Status == store.StatusFailed {
			failed = append(failed, j)
		}
	}
	require.Len(t, failed, 1, "%+v", jobs)
	assert.Equal(t, string(failure.ErrDiskFull), failed[0].ErrorCode)
	assert.Contains(t, failed[0].ErrorMessage, "the disk is full")
	assert.Empty(t, failed[0].Images)
}

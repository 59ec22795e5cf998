package setup

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPipLinesBecomeProgress feeds lines as pip 23 prints them for a network
// install (the tests' own installs are local, so they never download).
func TestPipLinesBecomeProgress(t *testing.T) {
	var got []Progress
	p := &pipProgress{total: 2, tell: func(pr Progress) { got = append(got, pr) }}
	for _, line := range []string{
		"Collecting torch==2.11.0 (from -r requirements.txt (line 2))",
		"  Downloading torch-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl (899.7 MB)",
		"Collecting numpy==2.4.6 (from -r requirements.txt (line 3))",
		"Collecting filelock (from torch==2.11.0)",
		"  Using cached filelock-3.20.0-py3-none-any.whl (16 kB)",
		"Installing collected packages: numpy, filelock, torch",
		"Successfully installed filelock-3.20.0 numpy-2.4.6 torch-2.11.0",
	} {
		p.line(line)
	}
	require.Len(t, got, 6)
	assert.Equal(t, "getting torch==2.11.0 (1 of 2+)", got[0].Message)
	assert.InDelta(t, 0.45, got[0].Fraction, 1e-9)
	assert.Equal(t, "downloading torch-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl (899.7 MB)", got[1].Message)
	assert.Less(t, got[3].Fraction, 0.8, "dependencies beyond the pins keep the bar below the install stage")
	assert.Equal(t, "installing 3 packages (this takes a while)", got[4].Message)
	assert.Equal(t, "install", got[5].Stage)
	for i := 1; i < len(got); i++ {
		assert.GreaterOrEqual(t, got[i].Fraction, got[i-1].Fraction)
	}
}

func TestPipFailuresAreSorted(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		opt       Options
		want      Kind
		todo      string
	}{
		{"no network", "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection broken by " +
			"'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object>: Failed to establish a new connection: " +
			"[Errno -3] Temporary failure in name resolution')': /simple/torch/\nERROR: No matching distribution found for torch==2.11.0\n",
			Options{}, NoNetwork, "--find-links"},
		{"full disk", "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device\n", Options{}, NoDisk, "free some disk space"},
		{"wheel missing from the folder", "ERROR: Could not find a version that satisfies the requirement torch==2.11.0 (from versions: none)\n" +
			"ERROR: No matching distribution found for torch==2.11.0\n", Options{FindLinks: "/wheels"}, Failed, "pip download"},
		{"anything else", "ERROR: something unexpected\n", Options{}, Failed, "pip's last lines"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := classifyPip(tc.out, tc.opt)
			var serr *Error
			require.True(t, errors.As(err, &serr))
			assert.Equal(t, tc.want, serr.Kind)
			assert.Contains(t, serr.Todo, tc.todo)
			assert.NotEmpty(t, serr.Detail, "pip's last lines go with the error")
		})
	}
}

func TestEstimateOfAWheelFolderIsItsSize(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a.whl"), make([]byte, 1<<20), 0o644))
	download, disk := Estimate(Options{FindLinks: dir})
	assert.Zero(t, download, "a local folder downloads nothing")
	assert.Equal(t, int64(3<<20+64<<20), disk)
	download, disk = Estimate(Options{})
	assert.Equal(t, int64(DefaultDownloadBytes), download)
	assert.Equal(t, int64(DefaultInstallBytes), disk)
}

package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReadOnlyCauseNamesTheFolderOrTheFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "atelier.db")
	require.NoError(t, os.WriteFile(path, nil, 0o644))
	deny := func(which string, errno syscall.Errno) func(string) error {
		return func(p string) error {
			if p == which {
				return &os.PathError{Op: "access", Path: p, Err: errno}
			}
			return nil
		}
	}

	err := readOnlyCause(path, deny(dir, syscall.EACCES))
	var ro *ReadOnlyError
	require.ErrorAs(t, err, &ro)
	assert.True(t, ro.Folder)
	assert.Equal(t, dir, ro.Path)
	assert.ErrorIs(t, err, ErrReadOnly)
	assert.ErrorIs(t, err, syscall.EACCES)
	assert.Contains(t, err.Error(), "the folder "+dir+" is read-only")
	assert.Contains(t, err.Error(), "ATELIER_HOME")

	err = readOnlyCause(path, deny(dir, syscall.EROFS))
	require.ErrorIs(t, err, ErrReadOnly)
	assert.Contains(t, err.Error(), "read-only file system")

	err = readOnlyCause(path, deny(path, syscall.EPERM))
	require.ErrorAs(t, err, &ro)
	assert.False(t, ro.Folder)
	assert.Contains(t, err.Error(), "the file is read-only")

	assert.NoError(t, readOnlyCause(path, func(string) error { return nil }), "a writable folder: the open failed for another reason")
	assert.NoError(t, readOnlyCause(path, deny(dir, syscall.ENOENT)), "only a refusal to write is blamed")
	assert.NoError(t, fileReadOnly(filepath.Join(dir, "missing.db"), deny(filepath.Join(dir, "missing.db"), syscall.EACCES)))
}

func TestOpenReadOnlyReadsAndNeverWrites(t *testing.T) {
	s, path := openTestStore(t)
	ctx := context.Background()
	_, err := s.CreateJob(ctx, "job-1", sampleRequest("a lighthouse"))
	require.NoError(t, err)
	require.NoError(t, s.Close())
	before, err := os.ReadFile(path)
	require.NoError(t, err)

	ro, err := OpenReadOnly(path)
	require.NoError(t, err)
	defer ro.Close()
	jobs, err := ro.ListJobs(ctx, 0)
	require.NoError(t, err)
	require.Len(t, jobs, 1)
	assert.Equal(t, "a lighthouse", jobs[0].Request.Prompt)
	_, err = ro.CreateJob(ctx, "job-2", sampleRequest("an owl"))
	assert.Error(t, err)
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, before, after)

	_, err = OpenReadOnly(filepath.Join(t.TempDir(), "missing.db"))
	assert.True(t, errors.Is(err, os.ErrNotExist), "%v", err)
}

func TestOpenReadOnlyRefusesAHistoryThatNeedsUpgrading(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := openDB(path)
	require.NoError(t, err)
	require.NoError(t, migrate(context.Background(), db, migrations[:1]))
	require.NoError(t, db.Close())

	_, err = OpenReadOnly(path)
	require.ErrorIs(t, err, errSchemaBehind)
	assert.Contains(t, err.Error(), "writable")
}

// TestAReadOnlyFolderIsNamedByOpenStore needs file modes to bind this
// process; as root they do not, and TestAReadOnlyHomeWithAHistoryIsReadAndNamedAsReadOnly
// (cmd/atelier) covers the same through the CLI run as another user.
func TestAReadOnlyFolderIsNamedByOpenStore(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("running as root, which file modes do not stop; the CLI's read-only home test runs as nobody instead")
	}
	s, path := openTestStore(t)
	require.NoError(t, s.Close())
	dir := filepath.Dir(path)
	require.NoError(t, os.Chmod(dir, 0o555))
	t.Cleanup(func() { os.Chmod(dir, 0o755) })

	_, err := OpenStore(path)
	require.ErrorIs(t, err, ErrReadOnly)
	assert.NotContains(t, err.Error(), "damaged")
	ro, err := OpenReadOnly(path)
	require.NoError(t, err)
	require.NoError(t, ro.Close())
}

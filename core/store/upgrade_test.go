package store

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeOldHistory makes a history as the first release wrote it: the first
// migration only, with one finished job in it.
func writeOldHistory(t *testing.T, path string) {
	t.Helper()
	db, err := openDB(path)
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, migrate(ctx, db, migrations[:1]))
	_, err = db.ExecContext(ctx, `INSERT INTO jobs (uid, status, created_at, params, prompt)
		VALUES ('old-job', 'done', '2026-01-01T00:00:00Z', '{"prompt":"an old lighthouse"}', 'an old lighthouse')`)
	require.NoError(t, err)
	require.NoError(t, db.Close())
}

func versionOfFile(t *testing.T, path string) int {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	require.NoError(t, err)
	defer db.Close()
	v, err := appliedVersion(context.Background(), db)
	require.NoError(t, err)
	return v
}

func TestAnOlderSchemaIsBackedUpThenMigrated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atelier.db")
	writeOldHistory(t, path)

	s, err := OpenStore(path)
	require.NoError(t, err)
	var prompt string
	require.NoError(t, s.db.QueryRow(`SELECT prompt FROM jobs WHERE uid = 'old-job'`).Scan(&prompt))
	assert.Equal(t, "an old lighthouse", prompt, "the migrated history keeps its jobs")
	require.NoError(t, s.Close())
	assert.Equal(t, SchemaVersion(), versionOfFile(t, path))

	backup := BackupPath(path, 1)
	require.FileExists(t, backup)
	assert.Equal(t, 1, versionOfFile(t, backup), "the backup is the history as it was before the upgrade")
	bdb, err := sql.Open("sqlite3", "file:"+backup+"?mode=ro")
	require.NoError(t, err)
	defer bdb.Close()
	var n int
	require.NoError(t, bdb.QueryRow(`SELECT COUNT(*) FROM jobs WHERE uid = 'old-job'`).Scan(&n))
	assert.Equal(t, 1, n)

	// Opening the now current history again writes no second backup.
	s, err = OpenStore(path)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	matches, err := filepath.Glob(path + ".bak-*")
	require.NoError(t, err)
	assert.Equal(t, []string{backup}, matches)
}

func TestASecondUpgradeAttemptKeepsTheFirstBackup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atelier.db")
	writeOldHistory(t, path)
	require.NoError(t, os.WriteFile(BackupPath(path, 1), []byte("an earlier backup"), 0o644))

	s, err := OpenStore(path)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	earlier, err := os.ReadFile(BackupPath(path, 1))
	require.NoError(t, err)
	assert.Equal(t, "an earlier backup", string(earlier))
	assert.Equal(t, 1, versionOfFile(t, BackupPath(path, 1)+"-2"))
}

func TestANewerSchemaIsRefusedUntouched(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "atelier.db")
	db, err := openDB(path)
	require.NoError(t, err)
	future := append(append([]migration{}, migrations...),
		migration{SchemaVersion() + 1, "from a later release", `CREATE TABLE later_things (x INTEGER)`})
	require.NoError(t, migrate(context.Background(), db, future))
	require.NoError(t, db.Close())
	before, err := os.ReadFile(path)
	require.NoError(t, err)

	_, err = OpenStore(path)
	require.ErrorIs(t, err, ErrNewerSchema)
	assert.Contains(t, err.Error(), "this history was written by a newer Atelier")
	assert.Contains(t, err.Error(), "install that version or newer")

	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, before, after, "a newer history must be left byte for byte as it was")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	assert.Equal(t, []string{"atelier.db"}, names, "no backup, WAL or other file is left next to it")
}

// A history written at schema 3 (the release before jobs recorded where they
// ran) is backed up at 3 and gains the placement columns, its jobs intact.
func TestASchema3HistoryIsBackedUpAndGainsThePlacementColumns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atelier.db")
	db, err := openDB(path)
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, migrate(ctx, db, migrations[:3]))
	_, err = db.ExecContext(ctx, `INSERT INTO jobs (uid, status, created_at, params, prompt, versions)
		VALUES ('v3-job', 'done', '2026-06-01T00:00:00.000Z', '{"prompt":"a lighthouse"}', 'a lighthouse', '{"torch":"2.5"}')`)
	require.NoError(t, err)
	require.NoError(t, db.Close())

	s, err := OpenStore(path)
	require.NoError(t, err)
	defer s.Close()
	assert.Equal(t, 3, versionOfFile(t, BackupPath(path, 3)), "the backup is the schema-3 file")
	jobs, err := s.ListJobs(ctx, 0)
	require.NoError(t, err)
	require.Len(t, jobs, 1)
	assert.Equal(t, "v3-job", jobs[0].UID)
	assert.Nil(t, jobs[0].RanOn, "a job from before placements says nothing of where it ran")
	var pinned sql.NullString
	require.NoError(t, s.db.QueryRow(`SELECT pinned_device FROM jobs WHERE uid = 'v3-job'`).Scan(&pinned))
	assert.False(t, pinned.Valid, "an old job is pinned to no device")
}

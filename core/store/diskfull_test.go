package store

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestIsDiskFullKnowsSQLitesFullDatabase(t *testing.T) {
	db, err := sql.Open("sqlite3", filepath.Join(t.TempDir(), "full.db"))
	require.NoError(t, err)
	defer db.Close()
	db.SetMaxOpenConns(1) // max_page_count holds for one connection
	ctx := context.Background()
	_, err = db.ExecContext(ctx, `CREATE TABLE t (b BLOB)`)
	require.NoError(t, err)
	// A database that may not grow is what SQLite reports for a full disk.
	_, err = db.ExecContext(ctx, `PRAGMA max_page_count = 2`)
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, `INSERT INTO t VALUES (zeroblob(100000))`)
	require.Error(t, err)
	assert.True(t, IsDiskFull(fmt.Errorf("finish job 1: %w", err)), "%v", err)

	assert.True(t, IsDiskFull(&fs.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}))
	assert.False(t, IsDiskFull(&fs.PathError{Op: "write", Path: "/x", Err: syscall.EACCES}))
	assert.False(t, IsDiskFull(sql.ErrNoRows))
	assert.False(t, IsDiskFull(nil))
}

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"syscall"

	"atelier/core/paths"
)

// ErrReadOnly is matched (with errors.Is) by the error of an open that failed
// because the history's folder or file cannot be written.
var ErrReadOnly = errors.New("the history cannot be written")

// ReadOnlyError says which folder or file stops the history from being
// written, and why.
type ReadOnlyError struct {
	Path   string // the folder or file that cannot be written
	Folder bool   // Path is the history's folder (its journal lives there)
	Err    error  // the system's answer: EACCES, EPERM or EROFS
}

func (e *ReadOnlyError) Error() string {
	what, cause := "the file", "is read-only" // the caller names it
	if e.Folder {
		what = "the folder " + e.Path
	}
	if errors.Is(e.Err, syscall.EROFS) {
		cause = "is on a read-only file system"
	}
	if e.Folder {
		cause += ", and the history writes its journal there"
	}
	return fmt.Sprintf("%s %s: make it writable, or set %s to a writable folder "+
		"(`atelier history`, `history search` and `queue list` can still read it)", what, cause, paths.HomeEnv)
}

func (e *ReadOnlyError) Unwrap() []error { return []error{ErrReadOnly, e.Err} }

// readOnlyCause explains a failed open when the folder or the file cannot be
// written, and returns nil otherwise (the open failed for another reason).
// probe answers for one path as access(2) with W_OK would.
func readOnlyCause(path string, probe func(string) error) error {
	dir := filepath.Dir(path)
	if err := probe(dir); denied(err) {
		return &ReadOnlyError{Path: dir, Folder: true, Err: err}
	}
	return fileReadOnly(path, probe)
}

// fileReadOnly is the part of readOnlyCause for the file alone, which may
// exist and be unwritable in a writable folder.
func fileReadOnly(path string, probe func(string) error) error {
	if _, err := os.Stat(path); err != nil {
		return nil // no file yet: nothing more to blame
	}
	if err := probe(path); denied(err) {
		return &ReadOnlyError{Path: path, Err: err}
	}
	return nil
}

func denied(err error) bool {
	return errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS)
}

// OpenReadOnly opens an existing history for reading only: nothing is
// migrated, no job is marked interrupted, and no file is created, so that a
// read-only folder can still be listed and searched. The schema must already
// be this Atelier's.
func OpenReadOnly(path string) (*Store, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("open history %s: %w", path, err)
	}
	// A WAL database can be read without writing only while its -shm file
	// exists; once the last writer has closed cleanly there is none, and
	// SQLite reads it safely only as immutable. Nothing can write it then
	// either: a writer needs the same folder.
	var firstErr error
	for _, extra := range []string{"mode=ro", "immutable=1"} {
		db, err := openReadOnlyDB(path, extra)
		if err == nil {
			err = checkSchema(context.Background(), db)
			if err == nil {
				return &Store{db: db, path: path}, nil
			}
			db.Close()
			if errors.Is(err, errSchemaBehind) || errors.Is(err, errSchemaAhead) {
				return nil, fmt.Errorf("open history %s: %w", path, err)
			}
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, fmt.Errorf("open history %s read-only: %w", path, firstErr)
}

func openReadOnlyDB(path, extra string) (*sql.DB, error) {
	q := url.Values{}
	q.Set("_busy_timeout", "10000")
	q.Set("_query_only", "1")
	return sql.Open("sqlite3", "file:"+(&url.URL{Path: path}).EscapedPath()+"?"+q.Encode()+"&"+extra)
}

var (
	errSchemaBehind = errors.New("the history was written by an older Atelier and must be upgraded, which needs " +
		"its folder to be writable: make it writable and run `atelier history` once")
	errSchemaAhead = errors.New("the history was written by a newer Atelier: upgrade Atelier")
)

// checkSchema makes sure a history opened without migrating has exactly the
// schema this Atelier reads.
func checkSchema(ctx context.Context, db *sql.DB) error {
	var current int
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return err
	}
	switch latest := migrations[len(migrations)-1].version; {
	case current < latest:
		return fmt.Errorf("%w (schema version %d, this Atelier's is %d)", errSchemaBehind, current, latest)
	case current > latest:
		return fmt.Errorf("%w (schema version %d, this Atelier knows only up to %d)", errSchemaAhead, current, latest)
	}
	return nil
}

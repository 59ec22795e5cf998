package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"time"

	"atelier/core/paths"
)

// migration is one numbered schema step. Steps are append-only: once released,
// a step is never edited, because databases in the field have already run it.
type migration struct {
	version int
	name    string
	up      string
}

// migrations is the schema history, oldest first, versions 1..n without gaps.
var migrations = []migration{
	{1, "jobs, images, settings and prompt search", `
CREATE TABLE jobs (
	id              INTEGER PRIMARY KEY,
	uid             TEXT    NOT NULL UNIQUE,
	status          TEXT    NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'cancelled', 'interrupted')),
	created_at      TEXT    NOT NULL,
	started_at      TEXT,
	finished_at     TEXT,
	params          TEXT    NOT NULL CHECK (json_valid(params)),
	-- Copies of params fields that search and listings need without parsing JSON.
	prompt          TEXT    NOT NULL DEFAULT '',
	negative_prompt TEXT    NOT NULL DEFAULT '',
	model           TEXT    NOT NULL DEFAULT '',
	error_code      TEXT,
	error_message   TEXT,
	error_detail    TEXT,
	total_s         REAL,
	load_s          REAL,
	denoise_s       REAL,
	its             REAL,
	device          TEXT,
	dtype           TEXT,
	peak_mem_bytes  INTEGER,
	-- The process running the job; its start time tells a reused pid apart.
	owner_pid       INTEGER,
	owner_start     INTEGER
);
CREATE INDEX jobs_status ON jobs(status);

CREATE TABLE images (
	id         INTEGER PRIMARY KEY,
	job_id     INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
	path       TEXT    NOT NULL CHECK (path <> ''),
	seed       INTEGER NOT NULL CHECK (seed >= 0),
	width      INTEGER NOT NULL CHECK (width > 0),
	height     INTEGER NOT NULL CHECK (height > 0),
	metadata   TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
	starred    INTEGER NOT NULL DEFAULT 0 CHECK (starred IN (0, 1)),
	created_at TEXT    NOT NULL
);
CREATE INDEX images_job ON images(job_id);

CREATE TABLE settings (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
) WITHOUT ROWID;

-- Full-text search over prompts, with jobs as its external content: the
-- triggers below are the only writers, so the index cannot drift.
CREATE VIRTUAL TABLE jobs_fts USING fts5(prompt, negative_prompt, content='jobs', content_rowid='id');
CREATE TRIGGER jobs_fts_insert AFTER INSERT ON jobs BEGIN
	INSERT INTO jobs_fts(rowid, prompt, negative_prompt) VALUES (new.id, new.prompt, new.negative_prompt);
END;
CREATE TRIGGER jobs_fts_delete AFTER DELETE ON jobs BEGIN
	INSERT INTO jobs_fts(jobs_fts, rowid, prompt, negative_prompt) VALUES ('delete', old.id, old.prompt, old.negative_prompt);
END;
CREATE TRIGGER jobs_fts_update AFTER UPDATE OF prompt, negative_prompt ON jobs BEGIN
	INSERT INTO jobs_fts(jobs_fts, rowid, prompt, negative_prompt) VALUES ('delete', old.id, old.prompt, old.negative_prompt);
	INSERT INTO jobs_fts(rowid, prompt, negative_prompt) VALUES (new.id, new.prompt, new.negative_prompt);
END;
`},
	{2, "queue order, attempts, sessions and gallery indexes", `
-- A session groups the jobs of one sitting or one batch file.
CREATE TABLE sessions (
	id         INTEGER PRIMARY KEY,
	name       TEXT    NOT NULL,
	source     TEXT    NOT NULL DEFAULT 'ui' CHECK (source IN ('ui', 'cli', 'file')),
	created_at TEXT    NOT NULL
);

-- queued: 0 a job run at once (generate), 1 a queue job shown in the queue,
-- 2 a finished queue job cleared from the queue view (it stays in the history).
ALTER TABLE jobs ADD COLUMN queued INTEGER NOT NULL DEFAULT 0 CHECK (queued IN (0, 1, 2));
-- Order of the queue: smaller runs first.
ALTER TABLE jobs ADD COLUMN position INTEGER;
-- How many times a process started the job: bounds re-runs after crashes.
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
-- Set by "cancel" from any process; the process running the job polls it.
ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1));
ALTER TABLE jobs ADD COLUMN session_id INTEGER REFERENCES sessions(id) ON DELETE SET NULL;
-- Denoising progress of a running job, written about once a second, so that
-- another process (the CLI, the app) can show it.
ALTER TABLE jobs ADD COLUMN progress_step INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN progress_total INTEGER NOT NULL DEFAULT 0;

CREATE INDEX jobs_queue ON jobs(queued, status, position);
CREATE INDEX jobs_session ON jobs(session_id);
CREATE INDEX jobs_model ON jobs(model);
CREATE INDEX images_starred ON images(starred) WHERE starred = 1;
CREATE INDEX images_seed ON images(seed);
CREATE INDEX images_created ON images(created_at);
`},
	{3, "the versions and speed settings a job ran with", `
-- JSON objects (name → value) from the result's metrics: the torch and diffusers
-- versions and the speed settings in effect, so that "history verify" can say
-- what differs between a job and its reproduction. NULL for older jobs.
ALTER TABLE jobs ADD COLUMN versions TEXT CHECK (versions IS NULL OR json_valid(versions));
ALTER TABLE jobs ADD COLUMN speed TEXT CHECK (speed IS NULL OR json_valid(speed));
`},
	{4, "where a job ran, and the device a queue job is pinned to", `
-- Where the job last ran: the host, the device as the queue names it (cpu,
-- cuda:N) and the worker's pid. NULL for jobs from before this step.
ALTER TABLE jobs ADD COLUMN run_host TEXT;
ALTER TABLE jobs ADD COLUMN run_device TEXT;
ALTER TABLE jobs ADD COLUMN worker_pid INTEGER;
-- A queue job pinned to one device runs only on a worker of that device;
-- NULL runs on any.
ALTER TABLE jobs ADD COLUMN pinned_device TEXT;
`},
	{5, "device leases, and jobs run for another process", `
-- One row per device whose worker a live Atelier process holds: only that
-- process starts a worker there. The start time (clock ticks since boot, 0
-- where it cannot be read) tells a reused pid apart; renewed_at lets a lease
-- whose holder cannot be probed expire.
CREATE TABLE device_leases (
	device       TEXT    PRIMARY KEY CHECK (device <> ''),
	holder_pid   INTEGER NOT NULL CHECK (holder_pid > 0),
	holder_start INTEGER NOT NULL DEFAULT 0,
	host         TEXT    NOT NULL DEFAULT '',
	acquired_at  TEXT    NOT NULL,
	renewed_at   TEXT    NOT NULL
) WITHOUT ROWID;

-- A job submitted by a process that does not hold its device: the holder
-- runs it (before the queue) and writes its progress here for the submitter.
ALTER TABLE jobs ADD COLUMN run_on TEXT;
ALTER TABLE jobs ADD COLUMN submitter_pid INTEGER;
ALTER TABLE jobs ADD COLUMN submitter_start INTEGER;
ALTER TABLE jobs ADD COLUMN progress_stage TEXT;
ALTER TABLE jobs ADD COLUMN preview_path TEXT;
ALTER TABLE jobs ADD COLUMN preview_step INTEGER;
ALTER TABLE jobs ADD COLUMN control_images TEXT CHECK (control_images IS NULL OR json_valid(control_images));
CREATE INDEX jobs_run_on ON jobs(run_on, status) WHERE run_on IS NOT NULL;
`},
	{6, "the field a job's error is about", `
-- The request field an invalid_request names, so that a job run for another
-- process tells its submitter which field to fix. NULL: none.
ALTER TABLE jobs ADD COLUMN error_field TEXT;
`},
	{7, "the command of a device lease's holder", `
-- How the holder was started (atelier queue run --watch, …), for the
-- messages and the doctor that name who holds a device. '' where unknown.
ALTER TABLE device_leases ADD COLUMN command TEXT NOT NULL DEFAULT '';
`},
	{8, "reproduction checks run for another process", `
-- A check that a recorded job reproduces (history verify, the gallery's
-- "Check it reproduces"), asked by a process that does not hold the device:
-- the holder runs it into the asker's temporary folder and writes its
-- progress and outcome here. It is no job of the history: the asker deletes
-- the row once it has read the outcome, and a row whose asker died is
-- deleted by the next holder that looks.
CREATE TABLE reproductions (
	id               INTEGER PRIMARY KEY,
	device           TEXT    NOT NULL CHECK (device <> ''),
	params           TEXT    NOT NULL CHECK (json_valid(params)),
	status           TEXT    NOT NULL CHECK (status IN ('pending', 'running', 'done')),
	submitter_pid    INTEGER NOT NULL,
	submitter_start  INTEGER NOT NULL DEFAULT 0,
	owner_pid        INTEGER,
	owner_start      INTEGER,
	cancel_requested INTEGER NOT NULL DEFAULT 0,
	progress_stage   TEXT,
	progress_step    INTEGER NOT NULL DEFAULT 0,
	progress_total   INTEGER NOT NULL DEFAULT 0,
	preview_path     TEXT,
	preview_step     INTEGER,
	outcome          TEXT CHECK (outcome IS NULL OR json_valid(outcome)),
	created_at       TEXT    NOT NULL
);
`},
}

// SchemaVersion is the schema this build writes.
func SchemaVersion() int { return migrations[len(migrations)-1].version }

// ErrNewerSchema is returned (wrapped) for a history written by a newer
// Atelier; such a file is refused before anything is written to it.
var ErrNewerSchema = errors.New("history from a newer Atelier")

func newerSchemaError(current, latest int) error {
	return fmt.Errorf("%w: this history was written by a newer Atelier (schema %d; this one knows up to %d); "+
		"install that version or newer, or set %s to start another history. The file was left untouched",
		ErrNewerSchema, current, latest, paths.HomeEnv)
}

// appliedVersion reads the schema version of db without writing anything
// (0 for a new, empty file).
func appliedVersion(ctx context.Context, db *sql.DB) (int, error) {
	var n int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("migrate: read version: %w", err)
	}
	if n == 0 {
		return 0, nil
	}
	var v int
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("migrate: read version: %w", err)
	}
	return v, nil
}

// migrateFile brings the history at path up to the latest step of list. A
// history from a newer Atelier is refused untouched; one from an older
// schema is first copied whole (VACUUM INTO, a consistent snapshot even while
// another process writes) to BackupPath(path, version), so that a failed or
// regretted upgrade can go back to the file as it was.
func migrateFile(ctx context.Context, db *sql.DB, path string, list []migration) error {
	current, err := appliedVersion(ctx, db)
	if err != nil {
		return err
	}
	latest := list[len(list)-1].version
	if current > latest {
		return newerSchemaError(current, latest)
	}
	if current > 0 && current < latest {
		backup := freeBackupPath(path, current)
		_, err := db.ExecContext(ctx, `VACUUM INTO ?`, backup)
		if err != nil {
			// Another Atelier opening the same history may have taken the
			// name between the check and the copy: try the next one once.
			backup = freeBackupPath(path, current)
			_, err = db.ExecContext(ctx, `VACUUM INTO ?`, backup)
		}
		if err != nil {
			return fmt.Errorf("back up the history before upgrading its schema from %d to %d (to %s): %w; "+
				"free some disk space and start Atelier again (the history is untouched)", current, latest, backup, err)
		}
	}
	return migrate(ctx, db, list)
}

// BackupPath is where the copy of a history is written before its schema is
// upgraded from version: next to it, named by that version.
func BackupPath(path string, version int) string {
	return fmt.Sprintf("%s.bak-schema%d", path, version)
}

// freeBackupPath is BackupPath, or a numbered variant when an earlier
// upgrade attempt already left one there (VACUUM INTO never overwrites).
func freeBackupPath(path string, version int) string {
	p := BackupPath(path, version)
	for i := 2; ; i++ {
		if _, err := os.Lstat(p); os.IsNotExist(err) {
			return p
		}
		p = fmt.Sprintf("%s-%d", BackupPath(path, version), i)
	}
}

// migrate applies every step of list that the database lacks, each in its own
// transaction together with its schema_migrations row, so that a failing step
// leaves the database exactly at the previous version.
func migrate(ctx context.Context, db *sql.DB, list []migration) error {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT NOT NULL,
		applied_at TEXT NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: create schema_migrations: %w", err)
	}
	var current int
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return fmt.Errorf("migrate: read version: %w", err)
	}
	if latest := list[len(list)-1].version; current > latest {
		return newerSchemaError(current, latest)
	}
	for i, m := range list {
		if m.version != i+1 {
			return fmt.Errorf("migrate: step %d is numbered %d; steps must run 1..n without gaps", i+1, m.version)
		}
		if m.version <= current {
			continue
		}
		if err := applyMigration(ctx, db, m); err != nil {
			return err
		}
	}
	return nil
}

func applyMigration(ctx context.Context, db *sql.DB, m migration) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate to %d (%s): %w", m.version, m.name, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit

	// Another process may have applied this step while we waited for the write
	// lock; the transaction is IMMEDIATE, so this check cannot race.
	var done int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = ?`, m.version).Scan(&done); err != nil {
		return fmt.Errorf("migrate to %d (%s): %w", m.version, m.name, err)
	}
	if done > 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, m.up); err != nil {
		return fmt.Errorf("migrate to %d (%s): %w", m.version, m.name, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(version, name, applied_at) VALUES (?, ?, ?)`,
		m.version, m.name, formatTime(time.Now())); err != nil {
		return fmt.Errorf("migrate to %d (%s): record: %w", m.version, m.name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate to %d (%s): commit: %w", m.version, m.name, err)
	}
	return nil
}

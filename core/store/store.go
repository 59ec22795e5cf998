// Package store is the SQLite history: jobs and their images, the queue,
// sessions, settings and the gallery's search, and their export.
package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"atelier/core/failure"
	"atelier/core/protocol"
	"atelier/core/request"

	_ "github.com/mattn/go-sqlite3" // the "sqlite3" driver; build with -tags sqlite_fts5
)

// ErrNotFound is returned (wrapped) when a job does not exist.
var ErrNotFound = errors.New("not found")

// interruptedMessage is what the user reads on a job whose process died.
const interruptedMessage = "Atelier stopped while this job was running; run it again"

// Store is the SQLite history: jobs, their images, and settings. It is safe
// for concurrent use, and several processes may open the same file.
type Store struct {
	db   *sql.DB
	path string
}

// OpenStore opens (creating if needed) the history at path, brings its schema
// up to date, and marks jobs whose process has died as interrupted. When the
// open fails because the folder or the file cannot be written, the error is a
// *ReadOnlyError (errors.Is(err, ErrReadOnly)); OpenReadOnly can still read it.
func OpenStore(path string) (*Store, error) {
	s, err := openStore(path)
	if err != nil {
		// SQLite's own words for this ("unable to open database file",
		// "attempt to write a readonly database") do not name the folder.
		if ro := readOnlyCause(path, probeWrite); ro != nil {
			return nil, fmt.Errorf("open history %s: %w", path, ro)
		}
		return nil, err
	}
	// SQLite opens a file it may not write read-only without a word, and the
	// first write would fail far from here.
	if fileReadOnly(path, probeWrite) != nil {
		s.Close()
		return nil, fmt.Errorf("open history %s: %w", path, readOnlyCause(path, probeWrite))
	}
	return s, nil
}

func openStore(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("open history %s: %w", path, err)
	}
	db, err := openDB(path)
	if err != nil {
		return nil, fmt.Errorf("open history %s: %w", path, err)
	}
	s := &Store{db: db, path: path}
	ctx := context.Background()
	if err := s.check(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if err := migrateFile(ctx, db, path, migrations); err != nil {
		db.Close()
		return nil, fmt.Errorf("open history %s: %w", path, err)
	}
	if _, err := s.MarkInterrupted(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open history %s: %w", path, err)
	}
	return s, nil
}

// openDB opens the file with the connection settings every Atelier
// connection needs. WAL lets the UI read while a job writes; FULL sync makes a
// commit durable before it returns (jobs are few, so the fsync costs nothing
// that matters); IMMEDIATE transactions take the write lock up front, so two
// writers queue on busy_timeout instead of failing with SQLITE_BUSY.
func openDB(path string) (*sql.DB, error) {
	q := url.Values{}
	q.Set("_journal_mode", "WAL")
	q.Set("_synchronous", "FULL")
	q.Set("_busy_timeout", "10000")
	q.Set("_foreign_keys", "on")
	q.Set("_txlock", "immediate")
	return sql.Open("sqlite3", "file:"+(&url.URL{Path: path}).EscapedPath()+"?"+q.Encode())
}

// check fails early, with advice, on a file that is not a usable database or
// a driver built without FTS5.
func (s *Store) check(ctx context.Context) error {
	var mode string
	if err := s.db.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil {
		return fmt.Errorf("open history %s: %w (if the file is damaged, move it away and Atelier starts a new one)", s.path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("open history %s: journal mode is %q, not WAL (is the folder on a network file system? use a local one)", s.path, mode)
	}
	var fts int
	if err := s.db.QueryRowContext(ctx, `SELECT sqlite_compileoption_used('ENABLE_FTS5')`).Scan(&fts); err != nil || fts != 1 {
		return fmt.Errorf("open history: this binary's SQLite lacks FTS5; build with `go build -tags sqlite_fts5` (the Makefile does)")
	}
	return nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Path is the database file.
func (s *Store) Path() string { return s.path }

// CreateJob records a job that starts running now in this process and
// returns its row id.
func (s *Store) CreateJob(ctx context.Context, uid string, req request.Request) (int64, error) {
	params, err := json.Marshal(req)
	if err != nil {
		return 0, fmt.Errorf("create job %s: %w", uid, err)
	}
	now := formatTime(time.Now())
	pid, start := selfProcess()
	res, err := s.db.ExecContext(ctx, `INSERT INTO jobs
		(uid, status, created_at, started_at, params, prompt, negative_prompt, model, owner_pid, owner_start)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		uid, StatusRunning, now, now, string(params), req.Prompt, req.NegativePrompt, req.Model, pid, start)
	if err != nil {
		return 0, fmt.Errorf("create job %s: %w", uid, err)
	}
	return res.LastInsertId()
}

// FinishJob marks a running job done and records its metrics and images, all
// in one transaction: the history never shows a done job without its images.
func (s *Store) FinishJob(ctx context.Context, jobID int64, m *protocol.Metrics, images []protocol.ImageResult) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("finish job %d: %w", jobID, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit

	var params string
	if err := tx.QueryRowContext(ctx, `SELECT params FROM jobs WHERE id = ?`, jobID).Scan(&params); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("finish job %d: %w", jobID, ErrNotFound)
		}
		return fmt.Errorf("finish job %d: %w", jobID, err)
	}
	var req request.Request
	if err := json.Unmarshal([]byte(params), &req); err != nil {
		return fmt.Errorf("finish job %d: stored params: %w", jobID, err)
	}
	if m == nil {
		m = &protocol.Metrics{}
	}
	versions, err := jsonOrNull(m.Versions)
	if err != nil {
		return fmt.Errorf("finish job %d: %w", jobID, err)
	}
	speed, err := jsonOrNull(m.Speed)
	if err != nil {
		return fmt.Errorf("finish job %d: %w", jobID, err)
	}
	now := formatTime(time.Now())
	res, err := tx.ExecContext(ctx, `UPDATE jobs SET status = ?, finished_at = ?,
		total_s = ?, load_s = ?, denoise_s = ?, its = ?, device = ?, dtype = ?, peak_mem_bytes = ?,
		versions = ?, speed = ?
		WHERE id = ? AND status IN (?, ?)`,
		StatusDone, now, m.TotalS, m.LoadS, m.DenoiseS, m.ItS, m.Device, m.Dtype, m.PeakMemBytes,
		versions, speed, jobID, StatusRunning, StatusPending)
	if err := requireOneRow(res, err); err != nil {
		return fmt.Errorf("finish job %d: %w", jobID, err)
	}
	for _, img := range images {
		// Each image keeps the exact settings that reproduce it alone.
		one := req
		one.Seed, one.Width, one.Height, one.BatchSize, one.OutputDir = img.Seed, img.Width, img.Height, 1, ""
		meta, err := json.Marshal(one)
		if err != nil {
			return fmt.Errorf("finish job %d: %w", jobID, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO images (job_id, path, seed, width, height, metadata, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)`, jobID, img.Path, img.Seed, img.Width, img.Height, string(meta), now); err != nil {
			return fmt.Errorf("finish job %d: image %s: %w", jobID, img.Path, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("finish job %d: commit: %w", jobID, err)
	}
	return nil
}

// jsonOrNull is a metrics map as stored: NULL when the worker sent none.
func jsonOrNull(m map[string]string) (any, error) {
	if len(m) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}

// FailJob ends a running job as cancelled (code cancelled) or failed (any
// other code), keeping the error for the history.
func (s *Store) FailJob(ctx context.Context, jobID int64, e *failure.JobError) error {
	if e == nil {
		return fmt.Errorf("fail job %d: no error given", jobID)
	}
	status := StatusFailed
	if e.Code == failure.ErrCancelled {
		status = StatusCancelled
	}
	retries := s.QueueRetries(ctx)
	// A queue job whose worker crashed goes back to the queue as interrupted,
	// as many times as the retry setting allows; after that it fails, so that
	// a job that kills the worker cannot loop.
	res, err := s.db.ExecContext(ctx, `UPDATE jobs SET
		status = CASE WHEN (queued = 1 OR run_on IS NOT NULL) AND ? = ? AND attempts <= ? THEN ? ELSE ? END,
		finished_at = ?, error_code = ?, error_message = ?, error_detail = ?, error_field = NULLIF(?, ''),
		cancel_requested = 0 WHERE id = ? AND status IN (?, ?)`,
		string(e.Code), string(failure.ErrWorkerCrashed), retries, StatusInterrupted, status,
		formatTime(time.Now()), string(e.Code), e.Message, e.Detail, e.Field, jobID, StatusRunning, StatusPending)
	if err := requireOneRow(res, err); err != nil {
		return fmt.Errorf("fail job %d: %w", jobID, err)
	}
	return nil
}

// SetJobPlacement records where a running job runs (its host, device and
// worker pid), so that the history tells which worker made each image.
func (s *Store) SetJobPlacement(ctx context.Context, jobID int64, p Placement) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE jobs SET run_host = ?, run_device = ?, worker_pid = ?
		WHERE id = ? AND status = ?`, p.Host, p.Device, p.WorkerPID, jobID, StatusRunning); err != nil {
		return fmt.Errorf("job %d placement: %w", jobID, err)
	}
	return nil
}

// requireOneRow turns an UPDATE that matched nothing into an error: the job
// is missing or already finished, and recording twice would rewrite history.
func requireOneRow(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("%w, or it is not running any more", ErrNotFound)
	}
	return nil
}

const jobColumns = `id, uid, status, created_at, started_at, finished_at, params,
	error_code, error_message, error_detail,
	total_s, load_s, denoise_s, its, device, dtype, peak_mem_bytes, versions, speed,
	run_host, run_device, worker_pid, error_field`

// ListJobs returns the newest jobs first, each with its images; limit <= 0
// means all of them.
func (s *Store) ListJobs(ctx context.Context, limit int) ([]JobRecord, error) {
	if limit <= 0 {
		limit = -1 // SQLite: no limit
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+jobColumns+` FROM jobs ORDER BY id DESC LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	jobs, err := scanJobs(rows)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	if len(jobs) == 0 {
		return jobs, nil
	}
	// One query for every image of the listed jobs; ids are ascending with
	// time, so the listed jobs are exactly those at or above the oldest one.
	imgs, err := s.queryImages(ctx, `WHERE i.job_id >= ? ORDER BY i.id`, jobs[len(jobs)-1].ID)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	byJob := make(map[int64]*JobRecord, len(jobs))
	for i := range jobs {
		byJob[jobs[i].ID] = &jobs[i]
	}
	for _, img := range imgs {
		if j := byJob[img.JobID]; j != nil {
			j.Images = append(j.Images, img)
		}
	}
	return jobs, nil
}

// GetJob returns one job with its images; the error wraps ErrNotFound if
// there is no such job.
func (s *Store) GetJob(ctx context.Context, id int64) (*JobRecord, error) {
	return s.getJob(ctx, `id = ?`, id)
}

// GetJobByUID is GetJob by the job's protocol id.
func (s *Store) GetJobByUID(ctx context.Context, uid string) (*JobRecord, error) {
	return s.getJob(ctx, `uid = ?`, uid)
}

func (s *Store) getJob(ctx context.Context, where string, arg any) (*JobRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+jobColumns+` FROM jobs WHERE `+where, arg)
	if err != nil {
		return nil, fmt.Errorf("get job %v: %w", arg, err)
	}
	jobs, err := scanJobs(rows)
	if err != nil {
		return nil, fmt.Errorf("get job %v: %w", arg, err)
	}
	if len(jobs) == 0 {
		return nil, fmt.Errorf("get job %v: %w", arg, ErrNotFound)
	}
	j := &jobs[0]
	if j.Images, err = s.queryImages(ctx, `WHERE i.job_id = ? ORDER BY i.id`, j.ID); err != nil {
		return nil, fmt.Errorf("get job %v: %w", arg, err)
	}
	return j, nil
}

// RecentImages returns the newest images first, with the prompt and model of
// their job; limit <= 0 means all of them.
func (s *Store) RecentImages(ctx context.Context, limit int) ([]ImageRecord, error) {
	if limit <= 0 {
		limit = -1
	}
	imgs, err := s.queryImages(ctx, `ORDER BY i.id DESC LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("recent images: %w", err)
	}
	return imgs, nil
}

func (s *Store) queryImages(ctx context.Context, tail string, args ...any) ([]ImageRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT i.id, i.job_id, i.path, i.seed, i.width, i.height,
		i.starred, i.created_at, j.prompt, j.model
		FROM images i JOIN jobs j ON j.id = i.job_id `+tail, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ImageRecord
	for rows.Next() {
		var im ImageRecord
		var created string
		if err := rows.Scan(&im.ID, &im.JobID, &im.Path, &im.Seed, &im.Width, &im.Height,
			&im.Starred, &created, &im.Prompt, &im.Model); err != nil {
			return nil, err
		}
		if im.CreatedAt, err = parseTime(created); err != nil {
			return nil, err
		}
		out = append(out, im)
	}
	return out, rows.Err()
}

func scanJobs(rows *sql.Rows) ([]JobRecord, error) {
	defer rows.Close()
	jobs := []JobRecord{}
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, err
		}
		jobs = append(jobs, j)
	}
	return jobs, rows.Err()
}

// scanJob reads one row of jobColumns, followed by any extra columns into extra.
func scanJob(rows *sql.Rows, extra ...any) (JobRecord, error) {
	var (
		j                                JobRecord
		created, params                  string
		started, finished                sql.NullString
		code, msg, detail, device, dtype sql.NullString
		versions, speed                  sql.NullString
		total, load, denoise, its        sql.NullFloat64
		peak                             sql.NullInt64
		runHost, runDevice               sql.NullString
		workerPID                        sql.NullInt64
		field                            sql.NullString
	)
	dest := append([]any{&j.ID, &j.UID, &j.Status, &created, &started, &finished, &params,
		&code, &msg, &detail, &total, &load, &denoise, &its, &device, &dtype, &peak, &versions, &speed,
		&runHost, &runDevice, &workerPID, &field}, extra...)
	if err := rows.Scan(dest...); err != nil {
		return j, err
	}
	var err error
	if j.CreatedAt, err = parseTime(created); err != nil {
		return j, err
	}
	if j.StartedAt, err = parseNullTime(started); err != nil {
		return j, err
	}
	if j.FinishedAt, err = parseNullTime(finished); err != nil {
		return j, err
	}
	if err := json.Unmarshal([]byte(params), &j.Request); err != nil {
		return j, fmt.Errorf("job %s: stored params: %w", j.UID, err)
	}
	j.ErrorCode, j.ErrorMessage, j.ErrorDetail, j.ErrorField = code.String, msg.String, detail.String, field.String
	if total.Valid {
		j.Metrics = &protocol.Metrics{TotalS: total.Float64, LoadS: load.Float64, DenoiseS: denoise.Float64,
			ItS: its.Float64, Device: device.String, Dtype: dtype.String, PeakMemBytes: peak.Int64}
		readMetricsMaps(j.Metrics, versions, speed)
	}
	if runHost.Valid || runDevice.Valid || workerPID.Valid {
		j.RanOn = &Placement{Host: runHost.String, Device: runDevice.String, WorkerPID: int(workerPID.Int64)}
	}
	return j, nil
}

// readMetricsMaps reads the versions and speed columns into m. Their CHECK
// keeps them JSON; an object of other values reads as none.
func readMetricsMaps(m *protocol.Metrics, versions, speed sql.NullString) {
	if versions.Valid {
		_ = json.Unmarshal([]byte(versions.String), &m.Versions)
	}
	if speed.Valid {
		_ = json.Unmarshal([]byte(speed.String), &m.Speed)
	}
}

// GetSetting returns a setting's value and whether it is set.
func (s *Store) GetSetting(ctx context.Context, key string) (string, bool, error) {
	var v string
	err := s.db.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("get setting %s: %w", key, err)
	}
	return v, true, nil
}

// SetSetting stores a setting, replacing any earlier value.
func (s *Store) SetSetting(ctx context.Context, key, value string) error {
	if _, err := s.db.ExecContext(ctx, `INSERT INTO settings(key, value) VALUES (?, ?)
		ON CONFLICT(key) DO UPDATE SET value = excluded.value`, key, value); err != nil {
		return fmt.Errorf("set setting %s: %w", key, err)
	}
	return nil
}

// MarkInterrupted ends the running jobs whose process is gone: they can never
// finish, and leaving them "running" would show a job that is not. A job of a
// live process is left alone, whichever process that is.
func (s *Store) MarkInterrupted(ctx context.Context) (int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, COALESCE(owner_pid, 0), COALESCE(owner_start, 0)
		FROM jobs WHERE status = ?`, StatusRunning)
	if err != nil {
		return 0, fmt.Errorf("find interrupted jobs: %w", err)
	}
	var dead []int64
	for rows.Next() {
		var id, pid, start int64
		if err := rows.Scan(&id, &pid, &start); err != nil {
			rows.Close()
			return 0, fmt.Errorf("find interrupted jobs: %w", err)
		}
		if !processAlive(int(pid), start) {
			dead = append(dead, id)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("find interrupted jobs: %w", err)
	}
	now := formatTime(time.Now())
	retries := s.QueueRetries(ctx)
	for _, id := range dead {
		// status = running again: the owner cannot have finished the job
		// since, but another opener may have marked it first. A queue job
		// stays in the queue as interrupted, so that it runs again, unless
		// it has used up its retries: then it fails, so that a job that
		// brings Atelier down cannot loop.
		if _, err := s.db.ExecContext(ctx, `UPDATE jobs SET
			status = CASE WHEN `+retriable+` AND attempts > ? THEN ? ELSE ? END,
			error_code = CASE WHEN `+retriable+` AND attempts > ? THEN ? ELSE error_code END,
			error_message = CASE WHEN `+retriable+` AND attempts > ? THEN ? ELSE ? END,
			finished_at = ?, cancel_requested = 0
			WHERE id = ? AND status = ?`,
			retries, StatusFailed, StatusInterrupted,
			retries, string(failure.ErrWorkerCrashed),
			retries, interruptedTwiceMessage, interruptedMessage,
			now, id, StatusRunning); err != nil {
			return 0, fmt.Errorf("mark job %d interrupted: %w", id, err)
		}
	}
	return len(dead), nil
}

// retriable selects the jobs that run again after a crash: queue jobs, and
// jobs submitted for another process's worker (their submitter waits).
const retriable = `(queued = 1 OR run_on IS NOT NULL)`

// interruptedTwiceMessage ends a queue job that was running each time Atelier
// or its worker died, as often as the retry setting allows.
const interruptedTwiceMessage = "Atelier or its worker stopped every time this job ran, so it is not run again " +
	"(it might be what brings them down); check its settings, then retry it"

// IntegrityCheck runs SQLite's integrity check and returns its verdict: "ok"
// for a sound database.
func (s *Store) IntegrityCheck(ctx context.Context) (string, error) {
	rows, err := s.db.QueryContext(ctx, `PRAGMA integrity_check`)
	if err != nil {
		return "", fmt.Errorf("integrity check: %w", err)
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var l string
		if err := rows.Scan(&l); err != nil {
			return "", fmt.Errorf("integrity check: %w", err)
		}
		lines = append(lines, l)
	}
	return strings.Join(lines, "\n"), rows.Err()
}

// Times are stored as fixed-width UTC text, so that they sort as strings and
// stay readable in the sqlite3 shell.
const timeLayout = "2006-01-02T15:04:05.000Z07:00"

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func parseTime(s string) (time.Time, error) { return time.Parse(timeLayout, s) }

func parseNullTime(s sql.NullString) (*time.Time, error) {
	if !s.Valid {
		return nil, nil
	}
	t, err := parseTime(s.String)
	if err != nil {
		return nil, err
	}
	return &t, nil
}

// SettingLastRequest keeps the form's last settings: the app saves them, and
// `atelier history import` leaves an imported PNG's settings there so that
// the next window opens with them.
const SettingLastRequest = "form.last_request"

// LastRequest returns the form's last settings, if any were saved.
func (s *Store) LastRequest(ctx context.Context) (request.Request, bool, error) {
	v, ok, err := s.GetSetting(ctx, SettingLastRequest)
	if err != nil || !ok {
		return request.Request{}, false, err
	}
	var r request.Request
	if err := json.Unmarshal([]byte(v), &r); err != nil {
		return request.Request{}, false, nil // an unreadable old value is as good as none
	}
	return r, true, nil
}

// SetLastRequest saves the form's settings.
func (s *Store) SetLastRequest(ctx context.Context, r request.Request) error {
	r.OutputDir = ""
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.SetSetting(ctx, SettingLastRequest, string(b))
}

// NewJobUID names a job for the protocol and the image files: sortable by
// time, unique by its random tail, and within the protocol's id alphabet.
func NewJobUID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"atelier/core/failure"
	"atelier/core/request"
)

// Queue settings, kept in the settings table so that every process sees them.
const (
	settingQueuePaused  = "queue.paused"
	settingQueueRetries = "queue.retries"
	// DefaultQueueRetries is how many times a queue job is re-run after the
	// app or the worker died while it ran.
	DefaultQueueRetries = 1
)

// Values of the jobs.queued column.
const (
	queuedNo      = 0 // run at once (generate)
	queuedShown   = 1 // in the queue view
	queuedCleared = 2 // finished and cleared from the queue view
)

// ErrNotPending is returned (wrapped) by operations that need a pending job.
var ErrNotPending = errors.New("the job is not pending any more")

// QueueJob is a job of the queue with its place and progress.
type QueueJob struct {
	JobRecord
	Position        int64 `json:"position"`
	Attempts        int   `json:"attempts"`
	SessionID       int64 `json:"session_id,omitempty"`
	Step            int   `json:"step,omitempty"`
	Total           int   `json:"total,omitempty"`
	CancelRequested bool  `json:"cancel_requested,omitempty"`
	// PinnedDevice is the only device the job may run on (cpu, cuda:N); empty: any.
	PinnedDevice string `json:"pinned_device,omitempty"`
}

// CheckDevice checks a device name a queue job can be pinned to: cpu, mps, or
// cuda:N (N the GPU's index as nvidia-smi numbers it).
func CheckDevice(d string) error {
	switch {
	case d == "cpu" || d == "mps":
		return nil
	case strings.HasPrefix(d, "cuda:"):
		n, err := strconv.Atoi(strings.TrimPrefix(d, "cuda:"))
		if err == nil && n >= 0 && n < 1024 && strconv.Itoa(n) == strings.TrimPrefix(d, "cuda:") {
			return nil
		}
	}
	return fmt.Errorf("device %q is not one Atelier knows: give cpu, mps or cuda:N (N the GPU's number, from 0, as nvidia-smi lists it)", d)
}

// Runnable reports whether the queue will still run the job.
func (j *QueueJob) Runnable() bool {
	return j.Status == StatusPending || j.Status == StatusInterrupted
}

// Finished reports whether the job has ended for good.
func (j *QueueJob) Finished() bool {
	switch j.Status {
	case StatusDone, StatusFailed, StatusCancelled:
		return true
	}
	return false
}

// Enqueue adds requests to the end of the queue, in order, in one
// transaction: either every job is added or none. Each request must have
// been through PrepareForQueue (or at least Validate). sessionID 0 means no
// session.
func (s *Store) Enqueue(ctx context.Context, sessionID int64, reqs []request.Request) ([]int64, error) {
	return s.EnqueuePinned(ctx, sessionID, reqs, nil)
}

// EnqueuePinned is Enqueue with the device each job is pinned to: devices[i]
// for reqs[i], "" (or a short devices) for any device.
func (s *Store) EnqueuePinned(ctx context.Context, sessionID int64, reqs []request.Request, devices []string) ([]int64, error) {
	if len(devices) > len(reqs) {
		return nil, fmt.Errorf("enqueue: %d devices for %d jobs", len(devices), len(reqs))
	}
	for i := range reqs {
		if err := reqs[i].Validate(); err != nil {
			return nil, fmt.Errorf("enqueue job %d of %d: %w", i+1, len(reqs), err)
		}
	}
	pinned := make([]any, len(reqs))
	for i, d := range devices {
		if d == "" {
			continue
		}
		if err := CheckDevice(d); err != nil {
			return nil, fmt.Errorf("enqueue job %d of %d: %w", i+1, len(reqs), err)
		}
		pinned[i] = d
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("enqueue: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	var pos int64
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(position), 0) FROM jobs WHERE queued = 1`).Scan(&pos); err != nil {
		return nil, fmt.Errorf("enqueue: %w", err)
	}
	var session any
	if sessionID > 0 {
		session = sessionID
	}
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO jobs
		(uid, status, created_at, params, prompt, negative_prompt, model, queued, position, session_id, pinned_device)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return nil, fmt.Errorf("enqueue: %w", err)
	}
	defer stmt.Close()
	now := time.Now()
	created := formatTime(now)
	// One random uid for the batch, numbered: thousands of jobs queued in
	// the same second cannot collide.
	batchUID := NewJobUID(now)
	ids := make([]int64, 0, len(reqs))
	for i, req := range reqs {
		params, err := json.Marshal(req)
		if err != nil {
			return nil, fmt.Errorf("enqueue: %w", err)
		}
		pos++
		res, err := stmt.ExecContext(ctx, fmt.Sprintf("%s-%d", batchUID, i), StatusPending, created, string(params),
			req.Prompt, req.NegativePrompt, req.Model, queuedShown, pos, session, pinned[i])
		if err != nil {
			return nil, fmt.Errorf("enqueue: %w", err)
		}
		id, err := res.LastInsertId()
		if err != nil {
			return nil, fmt.Errorf("enqueue: %w", err)
		}
		ids = append(ids, id)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("enqueue: commit: %w", err)
	}
	return ids, nil
}

const queueColumns = jobColumns + `, COALESCE(position, 0), attempts, COALESCE(session_id, 0),
	progress_step, progress_total, cancel_requested, COALESCE(pinned_device, '')`

// scanQueueJobs reads rows of queueColumns; extra receives any columns after them.
func scanQueueJobs(rows *sql.Rows, extra ...any) ([]QueueJob, error) {
	defer rows.Close()
	out := []QueueJob{}
	for rows.Next() {
		var q QueueJob
		dest := append([]any{&q.Position, &q.Attempts, &q.SessionID, &q.Step, &q.Total, &q.CancelRequested, &q.PinnedDevice}, extra...)
		j, err := scanJob(rows, dest...)
		if err != nil {
			return nil, err
		}
		q.JobRecord = j
		out = append(out, q)
	}
	return out, rows.Err()
}

// QueueFinishedShown bounds the finished jobs QueueJobs returns: the queue
// view is about work to come; the gallery and the history keep the rest.
const QueueFinishedShown = 500

// QueueJobs returns the jobs of the queue view: running first, then the ones
// still to run in queue order (all of them), then the newest
// QueueFinishedShown finished ones. QueueCounts counts them all.
func (s *Store) QueueJobs(ctx context.Context) ([]QueueJob, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT * FROM (
		SELECT `+queueColumns+`, CASE status WHEN 'running' THEN 0 ELSE 1 END AS rank,
			position AS sort_pos, '' AS sort_time
		FROM jobs WHERE queued = 1 AND status IN ('running', 'pending', 'interrupted')
		UNION ALL
		SELECT * FROM (SELECT `+queueColumns+`, 2, 0, COALESCE(finished_at, created_at)
			FROM jobs WHERE queued = 1 AND status IN ('done', 'failed', 'cancelled')
			ORDER BY COALESCE(finished_at, created_at) DESC, id DESC LIMIT ?))
		ORDER BY rank, sort_pos, sort_time DESC, id DESC`, QueueFinishedShown)
	if err != nil {
		return nil, fmt.Errorf("list the queue: %w", err)
	}
	var rank, pos any
	var sortTime string
	jobs, err := scanQueueJobs(rows, &rank, &pos, &sortTime)
	if err != nil {
		return nil, fmt.Errorf("list the queue: %w", err)
	}
	return jobs, nil
}

// GetQueueJob returns one job with its queue fields.
func (s *Store) GetQueueJob(ctx context.Context, id int64) (*QueueJob, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+queueColumns+` FROM jobs WHERE id = ?`, id)
	if err != nil {
		return nil, fmt.Errorf("get job %d: %w", id, err)
	}
	jobs, err := scanQueueJobs(rows)
	if err != nil {
		return nil, fmt.Errorf("get job %d: %w", id, err)
	}
	if len(jobs) == 0 {
		return nil, fmt.Errorf("get job %d: %w", id, ErrNotFound)
	}
	return &jobs[0], nil
}

// ClaimNext takes the first job the queue should run (an interrupted or
// pending one, in queue order), whatever device it is pinned to, and marks it
// running in this process. It is ClaimNextOn for a runner that does not know
// its device.
func (s *Store) ClaimNext(ctx context.Context) (*QueueJob, error) {
	return s.ClaimNextOn(ctx, "")
}

// ClaimNextOn takes the first job the queue should run on device (an
// interrupted or pending one, in queue order, unpinned or pinned to device;
// any job when device is "") and marks it running in this process, in one
// IMMEDIATE transaction, so that two processes, or two workers of one
// process, never take the same job. It returns nil when there is nothing to
// run.
func (s *Store) ClaimNextOn(ctx context.Context, device string) (*QueueJob, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("claim a queue job: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	var id int64
	err = tx.QueryRowContext(ctx, `SELECT id FROM jobs WHERE queued = 1 AND status IN (?, ?)
		AND (? = '' OR pinned_device IS NULL OR pinned_device = ?)
		ORDER BY position, id LIMIT 1`, StatusPending, StatusInterrupted, device, device).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("claim a queue job: %w", err)
	}
	pid, start := selfProcess()
	if _, err := tx.ExecContext(ctx, `UPDATE jobs SET status = ?, started_at = ?, finished_at = NULL,
		attempts = attempts + 1, owner_pid = ?, owner_start = ?, progress_step = 0, progress_total = 0
		WHERE id = ?`, StatusRunning, formatTime(time.Now()), pid, start, id); err != nil {
		return nil, fmt.Errorf("claim job %d: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("claim job %d: commit: %w", id, err)
	}
	return s.GetQueueJob(ctx, id)
}

// WaitingPinned counts the jobs still to run that are pinned, by device.
func (s *Store) WaitingPinned(ctx context.Context) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT pinned_device, COUNT(*) FROM jobs
		WHERE queued = 1 AND status IN (?, ?) AND pinned_device IS NOT NULL GROUP BY pinned_device`,
		StatusPending, StatusInterrupted)
	if err != nil {
		return nil, fmt.Errorf("count pinned jobs: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var d string
		var n int
		if err := rows.Scan(&d, &n); err != nil {
			return nil, fmt.Errorf("count pinned jobs: %w", err)
		}
		out[d] = n
	}
	return out, rows.Err()
}

// RequeueJob puts a running job back in the queue as pending, without
// counting the attempt: the queue was stopped on purpose, the job did not fail.
func (s *Store) RequeueJob(ctx context.Context, id int64) error {
	res, err := s.db.ExecContext(ctx, `UPDATE jobs SET status = ?, started_at = NULL, finished_at = NULL,
		attempts = MAX(attempts - 1, 0), progress_step = 0, progress_total = 0, cancel_requested = 0
		WHERE id = ? AND status = ? AND `+retriable, StatusPending, id, StatusRunning)
	if err := requireOneRow(res, err); err != nil {
		return fmt.Errorf("requeue job %d: %w", id, err)
	}
	return nil
}

// SetJobProgress records how far a running job is; callers throttle it.
func (s *Store) SetJobProgress(ctx context.Context, id int64, step, total int) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE jobs SET progress_step = ?, progress_total = ?
		WHERE id = ? AND status = ?`, step, total, id, StatusRunning); err != nil {
		return fmt.Errorf("job %d progress: %w", id, err)
	}
	return nil
}

// CancelRequested reports whether someone asked to cancel the job.
func (s *Store) CancelRequested(ctx context.Context, id int64) (bool, error) {
	var v bool
	if err := s.db.QueryRowContext(ctx, `SELECT cancel_requested FROM jobs WHERE id = ?`, id).Scan(&v); err != nil {
		return false, fmt.Errorf("job %d: %w", id, err)
	}
	return v, nil
}

// CancelJob cancels a queue job: a pending (or interrupted) one is cancelled
// at once; a running one is flagged, and the process running it stops it
// within a second or so. It returns the status the job has now.
func (s *Store) CancelJob(ctx context.Context, id int64) (string, error) {
	now := formatTime(time.Now())
	res, err := s.db.ExecContext(ctx, `UPDATE jobs SET status = ?, finished_at = ?, error_code = ?,
		error_message = 'cancelled before it ran' WHERE id = ? AND status IN (?, ?)`,
		StatusCancelled, now, string(failure.ErrCancelled), id, StatusPending, StatusInterrupted)
	if err != nil {
		return "", fmt.Errorf("cancel job %d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return StatusCancelled, nil
	}
	res, err = s.db.ExecContext(ctx, `UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = ?`, id, StatusRunning)
	if err != nil {
		return "", fmt.Errorf("cancel job %d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return StatusRunning, nil
	}
	j, err := s.GetQueueJob(ctx, id)
	if err != nil {
		return "", fmt.Errorf("cancel job %d: %w", id, err)
	}
	return j.Status, fmt.Errorf("cancel job %d: it is already %s", id, j.Status)
}

// RetryJob queues a new job with the settings of a failed, cancelled or
// interrupted one, at the end of the queue and in the same session, and
// returns its id. A done job is never run again this way: its images exist.
func (s *Store) RetryJob(ctx context.Context, id int64) (int64, error) {
	j, err := s.GetQueueJob(ctx, id)
	if err != nil {
		return 0, fmt.Errorf("retry job %d: %w", id, err)
	}
	switch j.Status {
	case StatusFailed, StatusCancelled, StatusInterrupted:
	default:
		return 0, fmt.Errorf("retry job %d: it is %s; only failed, cancelled or interrupted jobs can be retried", id, j.Status)
	}
	req := j.Request
	req.OutputDir = ""
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("retry job %d: %w", id, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	if j.Status == StatusInterrupted {
		// The old row would otherwise run again too.
		if _, err := tx.ExecContext(ctx, `UPDATE jobs SET status = ?, error_code = ? WHERE id = ? AND status = ?`,
			StatusCancelled, string(failure.ErrCancelled), id, StatusInterrupted); err != nil {
			return 0, fmt.Errorf("retry job %d: %w", id, err)
		}
	}
	var pos int64
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(position), 0) + 1 FROM jobs WHERE queued = 1`).Scan(&pos); err != nil {
		return 0, fmt.Errorf("retry job %d: %w", id, err)
	}
	params, err := json.Marshal(req)
	if err != nil {
		return 0, fmt.Errorf("retry job %d: %w", id, err)
	}
	var session any
	if j.SessionID > 0 {
		session = j.SessionID
	}
	var pinned any
	if j.PinnedDevice != "" {
		pinned = j.PinnedDevice
	}
	now := time.Now()
	res, err := tx.ExecContext(ctx, `INSERT INTO jobs
		(uid, status, created_at, params, prompt, negative_prompt, model, queued, position, session_id, pinned_device)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, NewJobUID(now), StatusPending, formatTime(now), string(params),
		req.Prompt, req.NegativePrompt, req.Model, queuedShown, pos, session, pinned)
	if err != nil {
		return 0, fmt.Errorf("retry job %d: %w", id, err)
	}
	newID, err := res.LastInsertId()
	if err != nil {
		return 0, fmt.Errorf("retry job %d: %w", id, err)
	}
	return newID, tx.Commit()
}

// UpdatePendingJob replaces the settings of a job that has not started yet.
func (s *Store) UpdatePendingJob(ctx context.Context, id int64, req request.Request) error {
	if err := req.Validate(); err != nil {
		return err
	}
	req.OutputDir = ""
	params, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("edit job %d: %w", id, err)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE jobs SET params = ?, prompt = ?, negative_prompt = ?, model = ?
		WHERE id = ? AND queued = 1 AND status = ?`,
		string(params), req.Prompt, req.NegativePrompt, req.Model, id, StatusPending)
	if err != nil {
		return fmt.Errorf("edit job %d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("edit job %d: %w", id, ErrNotPending)
	}
	return nil
}

// Move says where MoveJob puts a job.
type Move int

// Moves of a pending job within the queue.
const (
	MoveUp Move = iota
	MoveDown
	MoveTop
	MoveBottom
)

// MoveJob moves a pending job within the queue; moving past either end is a
// no-op. Only jobs still waiting can move: a running one is already running.
func (s *Store) MoveJob(ctx context.Context, id int64, m Move) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("move job %d: %w", id, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	var pos int64
	var status string
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(position, 0), status FROM jobs WHERE id = ? AND queued = 1`, id).
		Scan(&pos, &status); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("move job %d: %w", id, ErrNotFound)
		}
		return fmt.Errorf("move job %d: %w", id, err)
	}
	if status != StatusPending && status != StatusInterrupted {
		return fmt.Errorf("move job %d: %w", id, ErrNotPending)
	}
	waiting := `queued = 1 AND status IN ('pending', 'interrupted')`
	switch m {
	case MoveTop, MoveBottom:
		agg := `MIN(position) - 1`
		if m == MoveBottom {
			agg = `MAX(position) + 1`
		}
		var np int64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(`+agg+`, 0) FROM jobs WHERE queued = 1`).Scan(&np); err != nil {
			return fmt.Errorf("move job %d: %w", id, err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE jobs SET position = ? WHERE id = ?`, np, id); err != nil {
			return fmt.Errorf("move job %d: %w", id, err)
		}
	case MoveUp, MoveDown:
		q := `SELECT id, position FROM jobs WHERE ` + waiting + ` AND (position < ? OR (position = ? AND id < ?))
			ORDER BY position DESC, id DESC LIMIT 1`
		if m == MoveDown {
			q = `SELECT id, position FROM jobs WHERE ` + waiting + ` AND (position > ? OR (position = ? AND id > ?))
				ORDER BY position, id LIMIT 1`
		}
		var otherID, otherPos int64
		err := tx.QueryRowContext(ctx, q, pos, pos, id).Scan(&otherID, &otherPos)
		if errors.Is(err, sql.ErrNoRows) {
			return nil // already at that end
		}
		if err != nil {
			return fmt.Errorf("move job %d: %w", id, err)
		}
		if otherPos == pos {
			// Equal positions (should not happen): make room first.
			if m == MoveUp {
				otherPos, pos = pos, pos+1
			} else {
				otherPos = pos + 1
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE jobs SET position = ? WHERE id = ?`, otherPos, id); err != nil {
			return fmt.Errorf("move job %d: %w", id, err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE jobs SET position = ? WHERE id = ?`, pos, otherID); err != nil {
			return fmt.Errorf("move job %d: %w", id, err)
		}
	default:
		return fmt.Errorf("move job %d: unknown move %d", id, m)
	}
	return tx.Commit()
}

// ClearQueue removes the finished jobs from the queue view (they stay in the
// history and the gallery); with pendingToo it also cancels the jobs that
// have not started. It returns how many jobs left the view.
func (s *Store) ClearQueue(ctx context.Context, pendingToo bool) (int, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("clear the queue: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	if pendingToo {
		if _, err := tx.ExecContext(ctx, `UPDATE jobs SET status = ?, finished_at = ?, error_code = ?,
			error_message = 'cancelled before it ran' WHERE queued = 1 AND status IN (?, ?)`,
			StatusCancelled, formatTime(time.Now()), string(failure.ErrCancelled), StatusPending, StatusInterrupted); err != nil {
			return 0, fmt.Errorf("clear the queue: %w", err)
		}
	}
	res, err := tx.ExecContext(ctx, `UPDATE jobs SET queued = ? WHERE queued = 1 AND status IN (?, ?, ?)`,
		queuedCleared, StatusDone, StatusFailed, StatusCancelled)
	if err != nil {
		return 0, fmt.Errorf("clear the queue: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), tx.Commit()
}

// QueuePaused reports whether the queue is paused (a setting every process sees).
func (s *Store) QueuePaused(ctx context.Context) (bool, error) {
	v, ok, err := s.GetSetting(ctx, settingQueuePaused)
	return ok && v == "1", err
}

// SetQueuePaused pauses or resumes the queue. Pausing lets the running job
// finish and starts no other.
func (s *Store) SetQueuePaused(ctx context.Context, paused bool) error {
	v := "0"
	if paused {
		v = "1"
	}
	return s.SetSetting(ctx, settingQueuePaused, v)
}

// QueueRetries is how many times a queue job is re-run after the app or the
// worker died under it (the queue.retries setting, DefaultQueueRetries when
// unset or unreadable).
func (s *Store) QueueRetries(ctx context.Context) int {
	v, ok, err := s.GetSetting(ctx, settingQueueRetries)
	if err != nil || !ok {
		return DefaultQueueRetries
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return DefaultQueueRetries
	}
	return n
}

// SetQueueRetries sets how many times an interrupted queue job is re-run.
func (s *Store) SetQueueRetries(ctx context.Context, n int) error {
	if n < 0 {
		return fmt.Errorf("queue retries must be 0 or more, got %d", n)
	}
	return s.SetSetting(ctx, settingQueueRetries, strconv.Itoa(n))
}

// QueueCounts counts the queue view's jobs by status.
func (s *Store) QueueCounts(ctx context.Context) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT status, COUNT(*) FROM jobs WHERE queued = 1 GROUP BY status`)
	if err != nil {
		return nil, fmt.Errorf("count the queue: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, fmt.Errorf("count the queue: %w", err)
		}
		out[st] = n
	}
	return out, rows.Err()
}

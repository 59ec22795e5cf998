package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"atelier/core/request"
)

// submitterGoneMessage ends a job submitted for another process's worker
// whose submitter stopped before the job ran: nobody waits for it, as for a
// `generate` killed mid-job.
const submitterGoneMessage = "the Atelier process that asked for this job stopped before it ran; run it again"

// SubmitRelayed records a job that this process asks the holder of device's
// lease to run (docs/architecture.md, "One worker per device"): a pending row
// marked to run on device before the queue, with this process as its
// submitter. It returns the row's id.
func (s *Store) SubmitRelayed(ctx context.Context, uid string, req request.Request, device string) (int64, error) {
	if device == "" {
		return 0, fmt.Errorf("submit job %s: no device named", uid)
	}
	params, err := json.Marshal(req)
	if err != nil {
		return 0, fmt.Errorf("submit job %s: %w", uid, err)
	}
	pid, start := selfProcess()
	res, err := s.db.ExecContext(ctx, `INSERT INTO jobs
		(uid, status, created_at, params, prompt, negative_prompt, model, run_on, submitter_pid, submitter_start)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		uid, StatusPending, formatTime(time.Now()), string(params), req.Prompt, req.NegativePrompt, req.Model, device, pid, start)
	if err != nil {
		return 0, fmt.Errorf("submit job %s: %w", uid, err)
	}
	return res.LastInsertId()
}

// ClaimRelayed takes the oldest job submitted to run on device (pending, or
// interrupted with retries left) and marks it running in this process, in one
// IMMEDIATE transaction as ClaimNext does. A job whose submitter has died is
// not run: it is marked interrupted and loses its mark. It returns nil when
// there is nothing to run.
func (s *Store) ClaimRelayed(ctx context.Context, device string) (*QueueJob, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("claim a submitted job: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	rows, err := tx.QueryContext(ctx, `SELECT id, COALESCE(submitter_pid, 0), COALESCE(submitter_start, 0)
		FROM jobs WHERE run_on = ? AND status IN (?, ?) ORDER BY id`, device, StatusPending, StatusInterrupted)
	if err != nil {
		return nil, fmt.Errorf("claim a submitted job: %w", err)
	}
	type cand struct {
		id, pid, start int64
	}
	var cands []cand
	for rows.Next() {
		var c cand
		if err := rows.Scan(&c.id, &c.pid, &c.start); err != nil {
			rows.Close()
			return nil, fmt.Errorf("claim a submitted job: %w", err)
		}
		cands = append(cands, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim a submitted job: %w", err)
	}
	now := formatTime(time.Now())
	var claimed int64
	for _, c := range cands {
		if !processAlive(int(c.pid), c.start) {
			if _, err := tx.ExecContext(ctx, `UPDATE jobs SET status = ?, run_on = NULL, finished_at = ?,
				error_message = ? WHERE id = ?`, StatusInterrupted, now, submitterGoneMessage, c.id); err != nil {
				return nil, fmt.Errorf("claim a submitted job: %w", err)
			}
			continue
		}
		pid, start := selfProcess()
		if _, err := tx.ExecContext(ctx, `UPDATE jobs SET status = ?, started_at = ?, finished_at = NULL,
			attempts = attempts + 1, owner_pid = ?, owner_start = ?, progress_step = 0, progress_total = 0,
			progress_stage = NULL, preview_path = NULL, preview_step = NULL WHERE id = ?`,
			StatusRunning, now, pid, start, c.id); err != nil {
			return nil, fmt.Errorf("claim job %d: %w", c.id, err)
		}
		claimed = c.id
		break
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("claim a submitted job: commit: %w", err)
	}
	if claimed == 0 {
		return nil, nil
	}
	return s.GetQueueJob(ctx, claimed)
}

// SetRelayProgress records a running job's stage and step for its submitter;
// callers throttle it.
func (s *Store) SetRelayProgress(ctx context.Context, id int64, stage string, step, total int) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE jobs SET progress_stage = ?, progress_step = ?, progress_total = ?
		WHERE id = ? AND status = ?`, stage, step, total, id, StatusRunning); err != nil {
		return fmt.Errorf("job %d progress: %w", id, err)
	}
	return nil
}

// SetRelayPreview records a running job's latest preview for its submitter.
func (s *Store) SetRelayPreview(ctx context.Context, id int64, step int, path string) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE jobs SET preview_path = ?, preview_step = ?
		WHERE id = ? AND status = ?`, path, step, id, StatusRunning); err != nil {
		return fmt.Errorf("job %d preview: %w", id, err)
	}
	return nil
}

// SetControlImages records the preprocessed ControlNet images of a running
// job, which the history does not otherwise keep, for its submitter.
func (s *Store) SetControlImages(ctx context.Context, id int64, paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	b, err := json.Marshal(paths)
	if err != nil {
		return err
	}
	if _, err := s.db.ExecContext(ctx, `UPDATE jobs SET control_images = ? WHERE id = ? AND status = ?`,
		string(b), id, StatusRunning); err != nil {
		return fmt.Errorf("job %d control images: %w", id, err)
	}
	return nil
}

// RelayState is what the submitter of a job sees of it while another process
// runs it.
type RelayState struct {
	Status          string
	Stage           string
	Step, Total     int
	PreviewPath     string
	PreviewStep     int
	Attempts        int
	CancelRequested bool
	ControlImages   []string
}

// Finished reports whether the job has ended for good.
func (r RelayState) Finished() bool {
	switch r.Status {
	case StatusDone, StatusFailed, StatusCancelled:
		return true
	}
	return false
}

// GetRelayState reads a job's state for its submitter.
func (s *Store) GetRelayState(ctx context.Context, id int64) (RelayState, error) {
	var r RelayState
	var stage, preview, control sql.NullString
	var pstep sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT status, progress_stage, progress_step, progress_total, preview_path,
		preview_step, attempts, cancel_requested, control_images FROM jobs WHERE id = ?`, id).
		Scan(&r.Status, &stage, &r.Step, &r.Total, &preview, &pstep, &r.Attempts, &r.CancelRequested, &control)
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("job %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("job %d: %w", id, err)
	}
	r.Stage, r.PreviewPath, r.PreviewStep = stage.String, preview.String, int(pstep.Int64)
	if control.Valid {
		_ = json.Unmarshal([]byte(control.String), &r.ControlImages) // a CHECK keeps it JSON
	}
	return r, nil
}

// DeviceWork reports whether anything is left for the worker of device (a
// lease's name) whose jobs are pinned as pinned (cpu, cuda:N; "" takes any
// queue job, as ClaimNextOn): a queue job it may run still to run or running,
// or a job (or a reproduction check) submitted to run on device. A queue job pinned to another device is
// not its work: it waits for that device's worker.
func (s *Store) DeviceWork(ctx context.Context, device, pinned string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM jobs
		WHERE ((queued = 1 AND (? = '' OR pinned_device IS NULL OR pinned_device = ?)) OR run_on = ?)
		AND status IN (?, ?, ?)) OR EXISTS (SELECT 1 FROM reproductions WHERE device = ? AND status IN (?, ?))`,
		pinned, pinned, device, StatusPending, StatusInterrupted, StatusRunning, device, StatusPending, StatusRunning).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("look for work on %s: %w", device, err)
	}
	return n == 1, nil
}

// SubmittedJob is a job that one Atelier process submitted to run on the
// worker of the process holding its device.
type SubmittedJob struct {
	QueueJob
	RunOn        string `json:"run_on"`        // the device whose holder runs it
	SubmitterPID int    `json:"submitter_pid"` // the process that asked for it
}

// SubmittedJobs lists the jobs submitted to a device's holder that are still
// to run or running, oldest first (the order the holders run them).
func (s *Store) SubmittedJobs(ctx context.Context) ([]SubmittedJob, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+queueColumns+`, run_on, COALESCE(submitter_pid, 0)
		FROM jobs WHERE run_on IS NOT NULL AND status IN (?, ?, ?) ORDER BY id`,
		StatusRunning, StatusPending, StatusInterrupted)
	if err != nil {
		return nil, fmt.Errorf("list the submitted jobs: %w", err)
	}
	defer rows.Close()
	out := []SubmittedJob{}
	for rows.Next() {
		var sj SubmittedJob
		q := &sj.QueueJob
		j, err := scanJob(rows, &q.Position, &q.Attempts, &q.SessionID, &q.Step, &q.Total, &q.CancelRequested,
			&q.PinnedDevice, &sj.RunOn, &sj.SubmitterPID)
		if err != nil {
			return nil, fmt.Errorf("list the submitted jobs: %w", err)
		}
		q.JobRecord = j
		out = append(out, sj)
	}
	return out, rows.Err()
}

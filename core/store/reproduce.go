package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"atelier/core/failure"
	"atelier/core/protocol"
	"atelier/core/request"
)

// This file relays reproduction checks (core/verify) to the process holding
// their device, as relay.go does for jobs, in a table of their own: a check
// records nothing in the history, so it never becomes a job row.

// Reproduction is a check claimed to run here.
type Reproduction struct {
	ID      int64
	Request request.Request // its OutputDir is the asker's temporary folder
}

// ReproductionOutcome is how a relayed check ended: its result, or its error.
type ReproductionOutcome struct {
	Result *protocol.Result   `json:"result,omitempty"`
	Error  *failure.JobError  `json:"-"`
	Err    *reproductionError `json:"error,omitempty"`
}

type reproductionError struct {
	Code    failure.ErrorCode `json:"code"`
	Message string            `json:"message"`
	Detail  string            `json:"detail,omitempty"`
	Field   string            `json:"field,omitempty"`
}

// ReproductionState is what the asker sees of its check.
type ReproductionState struct {
	RelayState
	Owner   Lease // the process running it (PID, Start) while running
	Outcome *ReproductionOutcome
}

// SubmitReproduction asks the holder of device's lease to run the check req
// (into req.OutputDir); it returns the row's id, which the asker deletes with
// DeleteReproduction once it is over.
func (s *Store) SubmitReproduction(ctx context.Context, req request.Request, device string) (int64, error) {
	params, err := json.Marshal(req)
	if err != nil {
		return 0, fmt.Errorf("submit a reproduction check: %w", err)
	}
	pid, start := selfProcess()
	res, err := s.db.ExecContext(ctx, `INSERT INTO reproductions (device, params, status, submitter_pid, submitter_start, created_at)
		VALUES (?, ?, ?, ?, ?, ?)`, device, string(params), StatusPending, pid, start, formatTime(time.Now()))
	if err != nil {
		return 0, fmt.Errorf("submit a reproduction check: %w", err)
	}
	return res.LastInsertId()
}

// ClaimReproduction takes the oldest check asked of device whose asker still
// runs (pending, or running in a process that is gone), in one IMMEDIATE
// transaction; the checks of askers that are gone are deleted. It returns nil
// when there is none.
func (s *Store) ClaimReproduction(ctx context.Context, device string) (*Reproduction, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("claim a reproduction check: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	rows, err := tx.QueryContext(ctx, `SELECT id, params, status, submitter_pid, submitter_start,
		COALESCE(owner_pid, 0), COALESCE(owner_start, 0) FROM reproductions
		WHERE device = ? AND status IN (?, ?) ORDER BY id`, device, StatusPending, StatusRunning)
	if err != nil {
		return nil, fmt.Errorf("claim a reproduction check: %w", err)
	}
	type cand struct {
		id                      int64
		params, status          string
		spid, sstart, opid, ost int64
	}
	var cands []cand
	for rows.Next() {
		var c cand
		if err := rows.Scan(&c.id, &c.params, &c.status, &c.spid, &c.sstart, &c.opid, &c.ost); err != nil {
			rows.Close()
			return nil, fmt.Errorf("claim a reproduction check: %w", err)
		}
		cands = append(cands, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim a reproduction check: %w", err)
	}
	var claimed *Reproduction
	for _, c := range cands {
		if !processAlive(int(c.spid), c.sstart) {
			if _, err := tx.ExecContext(ctx, `DELETE FROM reproductions WHERE id = ?`, c.id); err != nil {
				return nil, fmt.Errorf("claim a reproduction check: %w", err)
			}
			continue
		}
		if c.status == StatusRunning && processAlive(int(c.opid), c.ost) {
			continue // another process runs it
		}
		var req request.Request
		if err := json.Unmarshal([]byte(c.params), &req); err != nil {
			return nil, fmt.Errorf("reproduction check %d: stored params: %w", c.id, err)
		}
		pid, start := selfProcess()
		if _, err := tx.ExecContext(ctx, `UPDATE reproductions SET status = ?, owner_pid = ?, owner_start = ?,
			progress_stage = NULL, progress_step = 0, progress_total = 0, preview_path = NULL, preview_step = NULL
			WHERE id = ?`, StatusRunning, pid, start, c.id); err != nil {
			return nil, fmt.Errorf("claim reproduction check %d: %w", c.id, err)
		}
		claimed = &Reproduction{ID: c.id, Request: req}
		break
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("claim a reproduction check: commit: %w", err)
	}
	return claimed, nil
}

// SetReproductionProgress records a running check's stage and step.
func (s *Store) SetReproductionProgress(ctx context.Context, id int64, stage string, step, total int) error {
	_, err := s.db.ExecContext(ctx, `UPDATE reproductions SET progress_stage = ?, progress_step = ?, progress_total = ?
		WHERE id = ? AND status = ?`, stage, step, total, id, StatusRunning)
	return err
}

// SetReproductionPreview records a running check's latest preview.
func (s *Store) SetReproductionPreview(ctx context.Context, id int64, step int, path string) error {
	_, err := s.db.ExecContext(ctx, `UPDATE reproductions SET preview_path = ?, preview_step = ?
		WHERE id = ? AND status = ?`, path, step, id, StatusRunning)
	return err
}

// FinishReproduction records a check's result or error for its asker.
func (s *Store) FinishReproduction(ctx context.Context, id int64, res *protocol.Result, jerr *failure.JobError) error {
	out := ReproductionOutcome{Result: res}
	if jerr != nil {
		out.Err = &reproductionError{Code: jerr.Code, Message: jerr.Message, Detail: jerr.Detail, Field: jerr.Field}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return fmt.Errorf("finish reproduction check %d: %w", id, err)
	}
	res2, err := s.db.ExecContext(ctx, `UPDATE reproductions SET status = ?, outcome = ? WHERE id = ? AND status = ?`,
		StatusDone, string(b), id, StatusRunning)
	if err := requireOneRow(res2, err); err != nil {
		return fmt.Errorf("finish reproduction check %d: %w", id, err)
	}
	return nil
}

// RequeueReproduction gives a running check back (its holder stops), so that
// its asker, or the next holder, runs it.
func (s *Store) RequeueReproduction(ctx context.Context, id int64) error {
	_, err := s.db.ExecContext(ctx, `UPDATE reproductions SET status = ?, owner_pid = NULL, owner_start = NULL
		WHERE id = ? AND status = ?`, StatusPending, id, StatusRunning)
	return err
}

// CancelReproduction flags a check for cancel; the process running it stops it.
func (s *Store) CancelReproduction(ctx context.Context, id int64) error {
	_, err := s.db.ExecContext(ctx, `UPDATE reproductions SET cancel_requested = 1 WHERE id = ?`, id)
	return err
}

// ReproductionCancelRequested reports whether the check's asker cancelled it
// (or deleted it).
func (s *Store) ReproductionCancelRequested(ctx context.Context, id int64) (bool, error) {
	var v bool
	err := s.db.QueryRowContext(ctx, `SELECT cancel_requested FROM reproductions WHERE id = ?`, id).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return true, nil
	}
	return v, err
}

// DeleteReproduction removes a check's row; its asker calls it once the check is over.
func (s *Store) DeleteReproduction(ctx context.Context, id int64) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM reproductions WHERE id = ?`, id)
	return err
}

// GetReproduction reads a check's state for its asker.
func (s *Store) GetReproduction(ctx context.Context, id int64) (ReproductionState, error) {
	var st ReproductionState
	var stage, preview, outcome sql.NullString
	var pstep, opid, ostart sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT status, progress_stage, progress_step, progress_total, preview_path,
		preview_step, cancel_requested, owner_pid, owner_start, outcome FROM reproductions WHERE id = ?`, id).
		Scan(&st.Status, &stage, &st.Step, &st.Total, &preview, &pstep, &st.CancelRequested, &opid, &ostart, &outcome)
	if errors.Is(err, sql.ErrNoRows) {
		return st, fmt.Errorf("reproduction check %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return st, fmt.Errorf("reproduction check %d: %w", id, err)
	}
	st.Stage, st.PreviewPath, st.PreviewStep = stage.String, preview.String, int(pstep.Int64)
	st.Owner = Lease{PID: int(opid.Int64), Start: ostart.Int64}
	if outcome.Valid {
		var o ReproductionOutcome
		if err := json.Unmarshal([]byte(outcome.String), &o); err != nil {
			return st, fmt.Errorf("reproduction check %d: outcome: %w", id, err)
		}
		if o.Err != nil {
			o.Error = &failure.JobError{Code: o.Err.Code, Message: o.Err.Message, Detail: o.Err.Detail, Field: o.Err.Field}
		}
		st.Outcome = &o
	}
	return st, nil
}

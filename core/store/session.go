package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Session sources.
const (
	SessionUI   = "ui"   // one sitting of the app
	SessionCLI  = "cli"  // `atelier queue add` from the command line
	SessionFile = "file" // one batch file
)

// Session groups the jobs of one sitting or one batch file, with the figures
// that analytics want.
type Session struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	Source    string    `json:"source"`
	CreatedAt time.Time `json:"created_at"`

	Jobs      int     `json:"jobs"`
	Done      int     `json:"done"`
	Failed    int     `json:"failed"`
	Cancelled int     `json:"cancelled"`
	Pending   int     `json:"pending"`
	TotalS    float64 `json:"total_s"`  // sum of the done jobs' times
	MeanItS   float64 `json:"mean_its"` // mean denoising it/s of the done jobs
	Images    int     `json:"images"`
}

// NewSession starts a session and returns its id.
func (s *Store) NewSession(ctx context.Context, name, source string) (int64, error) {
	if name == "" {
		name = time.Now().Format("2006-01-02 15:04")
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO sessions(name, source, created_at) VALUES (?, ?, ?)`,
		name, source, formatTime(time.Now()))
	if err != nil {
		return 0, fmt.Errorf("new session: %w", err)
	}
	return res.LastInsertId()
}

const sessionSelect = `SELECT s.id, s.name, s.source, s.created_at,
	COUNT(j.id),
	COALESCE(SUM(j.status = 'done'), 0),
	COALESCE(SUM(j.status = 'failed'), 0),
	COALESCE(SUM(j.status = 'cancelled'), 0),
	COALESCE(SUM(j.status IN ('pending', 'interrupted', 'running')), 0),
	COALESCE(SUM(CASE WHEN j.status = 'done' THEN j.total_s END), 0),
	COALESCE(AVG(CASE WHEN j.status = 'done' AND j.its > 0 THEN j.its END), 0),
	(SELECT COUNT(*) FROM images i JOIN jobs j2 ON j2.id = i.job_id WHERE j2.session_id = s.id)
	FROM sessions s LEFT JOIN jobs j ON j.session_id = s.id`

func scanSessions(rows *sql.Rows) ([]Session, error) {
	defer rows.Close()
	out := []Session{}
	for rows.Next() {
		var x Session
		var created string
		if err := rows.Scan(&x.ID, &x.Name, &x.Source, &created, &x.Jobs, &x.Done, &x.Failed, &x.Cancelled,
			&x.Pending, &x.TotalS, &x.MeanItS, &x.Images); err != nil {
			return nil, err
		}
		var err error
		if x.CreatedAt, err = parseTime(created); err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, rows.Err()
}

// Sessions returns every session with its figures, newest first.
func (s *Store) Sessions(ctx context.Context) ([]Session, error) {
	rows, err := s.db.QueryContext(ctx, sessionSelect+` GROUP BY s.id ORDER BY s.id DESC`)
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	out, err := scanSessions(rows)
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	return out, nil
}

// GetSession returns one session with its figures.
func (s *Store) GetSession(ctx context.Context, id int64) (*Session, error) {
	rows, err := s.db.QueryContext(ctx, sessionSelect+` WHERE s.id = ? GROUP BY s.id`, id)
	if err != nil {
		return nil, fmt.Errorf("get session %d: %w", id, err)
	}
	out, err := scanSessions(rows)
	if err != nil {
		return nil, fmt.Errorf("get session %d: %w", id, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("get session %d: %w", id, ErrNotFound)
	}
	return &out[0], nil
}

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"atelier/core/request"
)

// Rate is a measured generation speed. Its unit is pixel-steps per second
// (width × height × batch × steps / denoising seconds), so that one
// measurement estimates jobs of other sizes and step counts too.
type Rate struct {
	PixelStepsPerS float64 `json:"pixel_steps_per_s"`
	OverheadS      float64 `json:"overhead_s"` // mean time of a job outside denoising (load, encode, decode, save)
	Samples        int     `json:"samples"`
}

// Known reports whether the rate can estimate anything.
func (r Rate) Known() bool { return r.PixelStepsPerS > 0 }

// Estimate is how long req should take from start to end.
func (r Rate) Estimate(req request.Request) (time.Duration, bool) {
	if !r.Known() {
		return 0, false
	}
	s := (req.PixelSteps(req.Steps)+req.HiresPixelSteps())/r.PixelStepsPerS + r.OverheadS
	return time.Duration(s * float64(time.Second)), true
}

// MeasuredRate measures the speed of the last n done jobs (all of them when
// n <= 0) that report denoising times.
func (s *Store) MeasuredRate(ctx context.Context, n int) (Rate, error) {
	return s.MeasuredRateOf(ctx, RateFilter{}, n)
}

// RateFilter narrows a measurement to the jobs of one device kind and one
// model (as the history stores it); an empty field matches every job.
type RateFilter struct {
	Device string
	Model  string
}

// MeasuredRateOf is MeasuredRate over the jobs that f matches: the speed of a
// model on the CPU says little about another model, or about a GPU.
func (s *Store) MeasuredRateOf(ctx context.Context, f RateFilter, n int) (Rate, error) {
	if n <= 0 {
		n = -1
	}
	var r Rate
	var px, den, over float64
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*),
		COALESCE(SUM(CAST(json_extract(params, '$.width') AS REAL) * json_extract(params, '$.height')
			* MAX(COALESCE(json_extract(params, '$.batch_size'), 1), 1) * (json_extract(params, '$.steps')
			+ COALESCE(json_extract(params, '$.hires_scale'), 0) * COALESCE(json_extract(params, '$.hires_scale'), 0)
			* COALESCE(NULLIF(json_extract(params, '$.hires_steps'), 0), json_extract(params, '$.steps'))
			* COALESCE(NULLIF(json_extract(params, '$.hires_strength'), 0), ?))), 0),
		COALESCE(SUM(denoise_s), 0), COALESCE(AVG(MAX(total_s - denoise_s, 0)), 0)
		FROM (SELECT params, denoise_s, total_s FROM jobs
			WHERE status = 'done' AND denoise_s > 0 AND (? = '' OR device = ?) AND (? = '' OR model = ?)
			ORDER BY id DESC LIMIT ?)`, request.DefaultHiresStrength, f.Device, f.Device, f.Model, f.Model, n).Scan(&r.Samples, &px, &den, &over)
	if err != nil {
		return Rate{}, fmt.Errorf("measure the generation speed: %w", err)
	}
	if den > 0 {
		r.PixelStepsPerS = px / den
	}
	r.OverheadS = over
	return r, nil
}

// LastDevice is the device kind of the newest done job that names one, or ""
// when there is none: before a worker has started, the best guess of where
// the next job runs.
func (s *Store) LastDevice(ctx context.Context) (string, error) {
	var d sql.NullString
	err := s.db.QueryRowContext(ctx, `SELECT device FROM jobs
		WHERE status = 'done' AND device IS NOT NULL AND device <> '' ORDER BY id DESC LIMIT 1`).Scan(&d)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("the last job's device: %w", err)
	}
	return d.String, nil
}

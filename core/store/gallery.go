package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode"

	"atelier/core/protocol"
	"atelier/core/request"
)

// GalleryQuery filters the gallery. Zero fields do not filter.
type GalleryQuery struct {
	// Text is searched in the prompt and negative prompt with FTS5: every
	// word must occur, the last one as a prefix (so results follow typing).
	Text      string
	Model     string    // exact model, as the history stores it
	Seed      *int64    // the image's own seed
	From, To  time.Time // created at From or later, and before To
	Starred   bool      // starred images only
	SessionID int64

	// likeScan searches Text with LIKE over every prompt instead of the
	// index: the baseline the benchmarks compare against.
	likeScan bool
}

// Empty reports whether the query filters nothing.
func (q GalleryQuery) Empty() bool {
	return strings.TrimSpace(q.Text) == "" && q.Model == "" && q.Seed == nil && q.From.IsZero() &&
		q.To.IsZero() && !q.Starred && q.SessionID == 0
}

// ftsQuery turns what a user typed into an FTS5 query: each word quoted (so
// that FTS5 operators and punctuation are plain text), all of them required,
// the last one as a prefix. It returns "" when nothing searchable is left.
func ftsQuery(text string) string {
	words := strings.FieldsFunc(text, func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsNumber(r) && r != '_'
	})
	if len(words) == 0 {
		return ""
	}
	parts := make([]string, len(words))
	for i, w := range words {
		parts[i] = `"` + strings.ReplaceAll(w, `"`, `""`) + `"`
	}
	if !strings.HasSuffix(text, " ") {
		parts[len(parts)-1] += "*"
	}
	return strings.Join(parts, " ")
}

// where builds the WHERE clause of a gallery query over images i JOIN jobs j.
//
// For a page (page true) the filters on jobs are written as +j.col, which
// keeps SQLite from driving the query by their index: walking the images
// newest first and checking each is much cheaper than collecting every match
// and sorting it, since a page needs only the first few hundred. With the
// starred filter, the text search is checked per row for the same reason:
// the starred index is the smaller set to walk.
func (q GalleryQuery) where(page bool) (string, []any) {
	plus := ""
	if page {
		plus = "+"
	}
	textPlus := ""
	if q.Starred {
		textPlus = "+"
	}
	var conds []string
	var args []any
	if text := strings.TrimSpace(q.Text); text != "" {
		if q.likeScan {
			like := "%" + strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(text) + "%"
			conds = append(conds, `(j.prompt LIKE ? ESCAPE '\' OR j.negative_prompt LIKE ? ESCAPE '\')`)
			args = append(args, like, like)
		} else if fq := ftsQuery(q.Text); fq != "" {
			conds = append(conds, textPlus+`i.job_id IN (SELECT rowid FROM jobs_fts WHERE jobs_fts MATCH ?)`)
			args = append(args, fq)
		}
	}
	if q.Model != "" {
		conds = append(conds, plus+`j.model = ?`)
		args = append(args, q.Model)
	}
	if q.Seed != nil {
		conds = append(conds, `i.seed = ?`)
		args = append(args, *q.Seed)
	}
	if !q.From.IsZero() {
		conds = append(conds, `i.created_at >= ?`)
		args = append(args, formatTime(q.From))
	}
	if !q.To.IsZero() {
		conds = append(conds, `i.created_at < ?`)
		args = append(args, formatTime(q.To))
	}
	if q.Starred {
		conds = append(conds, `i.starred = 1`)
	}
	if q.SessionID > 0 {
		conds = append(conds, plus+`j.session_id = ?`)
		args = append(args, q.SessionID)
	}
	if len(conds) == 0 {
		return "", nil
	}
	return "WHERE " + strings.Join(conds, " AND "), args
}

// SearchImages returns a page of the images that match q, newest first.
func (s *Store) SearchImages(ctx context.Context, q GalleryQuery, offset, limit int) ([]ImageRecord, error) {
	if limit <= 0 {
		limit = -1
	}
	where, args := q.where(true)
	// The page's ids first, then their columns: sorting ids is cheap, sorting
	// whole rows with their prompts is not.
	imgs, err := s.queryImages(ctx, `WHERE i.id IN (SELECT i.id FROM images i JOIN jobs j ON j.id = i.job_id `+where+
		` ORDER BY i.id DESC LIMIT ? OFFSET ?) ORDER BY i.id DESC`, append(args, limit, max(offset, 0))...)
	if err != nil {
		return nil, fmt.Errorf("search images: %w", err)
	}
	return imgs, nil
}

// CountImages counts the images that match q.
func (s *Store) CountImages(ctx context.Context, q GalleryQuery) (int, error) {
	where, args := q.where(false)
	join := ""
	if strings.Contains(where, "j.") {
		join = ` JOIN jobs j ON j.id = i.job_id`
	}
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM images i`+join+` `+where, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count images: %w", err)
	}
	return n, nil
}

// GalleryModels lists the models that made the history's images, most used first.
func (s *Store) GalleryModels(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT model FROM jobs WHERE model <> '' AND status = 'done'
		GROUP BY model ORDER BY COUNT(*) DESC, model`)
	if err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var m string
		if err := rows.Scan(&m); err != nil {
			return nil, fmt.Errorf("list models: %w", err)
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// ImageDetail is everything the history knows of one image.
type ImageDetail struct {
	ImageRecord
	// Request is the exact settings that reproduce this image alone (its own
	// seed, batch size 1).
	Request   request.Request   `json:"request"`
	JobUID    string            `json:"job_uid"`
	Metrics   *protocol.Metrics `json:"metrics,omitempty"`
	SessionID int64             `json:"session_id,omitempty"`
}

// GetImage returns one image with its settings and its job's metrics.
func (s *Store) GetImage(ctx context.Context, id int64) (*ImageDetail, error) {
	imgs, err := s.queryImages(ctx, `WHERE i.id = ?`, id)
	if err != nil {
		return nil, fmt.Errorf("get image %d: %w", id, err)
	}
	if len(imgs) == 0 {
		return nil, fmt.Errorf("get image %d: %w", id, ErrNotFound)
	}
	d := &ImageDetail{ImageRecord: imgs[0]}
	var meta string
	var total, load, denoise, its sql.NullFloat64
	var device, dtype, versions, speed sql.NullString
	var peak sql.NullInt64
	if err := s.db.QueryRowContext(ctx, `SELECT i.metadata, j.uid, COALESCE(j.session_id, 0),
		j.total_s, j.load_s, j.denoise_s, j.its, j.device, j.dtype, j.peak_mem_bytes, j.versions, j.speed
		FROM images i JOIN jobs j ON j.id = i.job_id WHERE i.id = ?`, id).Scan(&meta, &d.JobUID, &d.SessionID,
		&total, &load, &denoise, &its, &device, &dtype, &peak, &versions, &speed); err != nil {
		return nil, fmt.Errorf("get image %d: %w", id, err)
	}
	if err := json.Unmarshal([]byte(meta), &d.Request); err != nil {
		return nil, fmt.Errorf("get image %d: stored metadata: %w", id, err)
	}
	if total.Valid {
		d.Metrics = &protocol.Metrics{TotalS: total.Float64, LoadS: load.Float64, DenoiseS: denoise.Float64, ItS: its.Float64,
			Device: device.String, Dtype: dtype.String, PeakMemBytes: peak.Int64}
		readMetricsMaps(d.Metrics, versions, speed)
	}
	return d, nil
}

// SetStarred stars or unstars an image.
func (s *Store) SetStarred(ctx context.Context, id int64, starred bool) error {
	res, err := s.db.ExecContext(ctx, `UPDATE images SET starred = ? WHERE id = ?`, starred, id)
	if err := requireOneRow(res, err); err != nil {
		return fmt.Errorf("star image %d: %w", id, err)
	}
	return nil
}

// DeleteImage removes an image from the history and returns its record. It
// does not touch files: DeleteImageFiles does, after this has committed, so
// that a crash in between leaves a stray file rather than a row without one.
func (s *Store) DeleteImage(ctx context.Context, id int64) (*ImageRecord, error) {
	imgs, err := s.queryImages(ctx, `WHERE i.id = ?`, id)
	if err != nil {
		return nil, fmt.Errorf("delete image %d: %w", id, err)
	}
	if len(imgs) == 0 {
		return nil, fmt.Errorf("delete image %d: %w", id, ErrNotFound)
	}
	res, err := s.db.ExecContext(ctx, `DELETE FROM images WHERE id = ?`, id)
	if err := requireOneRow(res, err); err != nil {
		return nil, fmt.Errorf("delete image %d: %w", id, err)
	}
	return &imgs[0], nil
}

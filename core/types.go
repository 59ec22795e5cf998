package core

import (
	"context"
	"time"

	"atelier/core/request"
)

// Job statuses as stored in the jobs table.
const (
	StatusPending     = "pending"
	StatusRunning     = "running"
	StatusDone        = "done"
	StatusFailed      = "failed"
	StatusCancelled   = "cancelled"
	StatusInterrupted = "interrupted"
)

// Generator runs one request on a worker and streams its messages; the channel
// closes after the final result or error. The bridge implements it.
type Generator interface {
	Submit(ctx context.Context, id string, req request.Request) (<-chan Message, error)
	Cancel(id string) error
}

// JobRecord is one row of the jobs table.
type JobRecord struct {
	ID           int64           `json:"id"`
	UID          string          `json:"uid"`
	Status       string          `json:"status"`
	Request      request.Request `json:"request"`
	CreatedAt    time.Time       `json:"created_at"`
	StartedAt    *time.Time      `json:"started_at,omitempty"`
	FinishedAt   *time.Time      `json:"finished_at,omitempty"`
	ErrorCode    string          `json:"error_code,omitempty"`
	ErrorMessage string          `json:"error_message,omitempty"`
	ErrorDetail  string          `json:"error_detail,omitempty"`
	Metrics      *Metrics        `json:"metrics,omitempty"`
	Images       []ImageRecord   `json:"images,omitempty"`
}

// ImageRecord is one row of the images table.
type ImageRecord struct {
	ID        int64     `json:"id"`
	JobID     int64     `json:"job_id"`
	Path      string    `json:"path"`
	Seed      int64     `json:"seed"`
	Width     int       `json:"width"`
	Height    int       `json:"height"`
	Prompt    string    `json:"prompt"`
	Model     string    `json:"model"`
	Starred   bool      `json:"starred"`
	CreatedAt time.Time `json:"created_at"`
}

// JobOutcome is what a finished job produced.
type JobOutcome struct {
	JobID   int64         `json:"job_id"`
	UID     string        `json:"uid"`
	Images  []ImageResult `json:"images"`
	Metrics *Metrics      `json:"metrics,omitempty"`
	// ControlImages are the preprocessed ControlNet images, if any.
	ControlImages []string `json:"control_images,omitempty"`
}

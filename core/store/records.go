package store

import (
	"time"

	"atelier/core/protocol"
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
	// ErrorField is the request field the error is about ("" for none).
	ErrorField string            `json:"error_field,omitempty"`
	Metrics    *protocol.Metrics `json:"metrics,omitempty"`
	// RanOn says where the job last ran; nil before it reached a worker.
	RanOn  *Placement    `json:"ran_on,omitempty"`
	Images []ImageRecord `json:"images,omitempty"`
}

// Placement is where a job ran: the host, the device as the queue names it
// (cpu, cuda:N, or what the worker reported) and the worker's process id.
type Placement struct {
	Host      string `json:"host"`
	Device    string `json:"device"`
	WorkerPID int    `json:"worker_pid"`
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

// Package jobs runs generation jobs: Runner for one, QueueRunner for the
// queue, and the queue's time estimates.
package jobs

import (
	"context"

	"atelier/core/protocol"
	"atelier/core/request"
)

// Generator runs one request on a worker and streams its messages; the channel
// closes after the final result or error. The bridge implements it.
type Generator interface {
	Submit(ctx context.Context, id string, req request.Request) (<-chan protocol.Message, error)
	Cancel(id string) error
}

// JobOutcome is what a finished job produced.
type JobOutcome struct {
	JobID   int64                  `json:"job_id"`
	UID     string                 `json:"uid"`
	Images  []protocol.ImageResult `json:"images"`
	Metrics *protocol.Metrics      `json:"metrics,omitempty"`
	// ControlImages are the preprocessed ControlNet images, if any.
	ControlImages []string `json:"control_images,omitempty"`
}

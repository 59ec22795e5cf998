package jobs

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"atelier/core/request"
	"atelier/core/store"
)

// The queue's helpers, as the store's queue tests have them.

func queueRequest(prompt string) request.Request {
	r := tinyRequest()
	r.Prompt, r.Seed = prompt, 11
	return r
}

func enqueue(t *testing.T, s *store.Store, session int64, prompts ...string) []int64 {
	t.Helper()
	reqs := make([]request.Request, len(prompts))
	for i, p := range prompts {
		reqs[i] = queueRequest(p)
	}
	ids, err := s.Enqueue(context.Background(), session, reqs)
	require.NoError(t, err)
	require.Len(t, ids, len(prompts))
	return ids
}

// waitingOrder is the prompts of the jobs still to run, in queue order.
func waitingOrder(t *testing.T, s *store.Store) []string {
	t.Helper()
	jobs, err := s.QueueJobs(context.Background())
	require.NoError(t, err)
	var out []string
	for _, j := range jobs {
		if j.Runnable() {
			out = append(out, j.Request.Prompt)
		}
	}
	return out
}

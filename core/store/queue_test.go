package store

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"atelier/core/protocol"
	"atelier/core/request"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func queueRequest(prompt string) request.Request {
	r := tinyRequest()
	r.Prompt, r.Seed = prompt, 11
	return r
}

func enqueue(t *testing.T, s *Store, session int64, prompts ...string) []int64 {
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
func waitingOrder(t *testing.T, s *Store) []string {
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

func TestEnqueueAndClaimInOrder(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	ids := enqueue(t, s, 0, "a", "b", "c")

	jobs, err := s.QueueJobs(ctx)
	require.NoError(t, err)
	require.Len(t, jobs, 3)
	for _, j := range jobs {
		assert.Equal(t, StatusPending, j.Status)
		assert.Nil(t, j.StartedAt)
		assert.Zero(t, j.Attempts)
	}

	first, err := s.ClaimNext(ctx)
	require.NoError(t, err)
	require.NotNil(t, first)
	assert.Equal(t, ids[0], first.ID)
	assert.Equal(t, StatusRunning, first.Status)
	assert.Equal(t, 1, first.Attempts)
	assert.NotNil(t, first.StartedAt)

	second, err := s.ClaimNext(ctx)
	require.NoError(t, err)
	assert.Equal(t, ids[1], second.ID, "a claimed job is never claimed again")

	// The running jobs come first in the view, then the waiting one.
	jobs, err = s.QueueJobs(ctx)
	require.NoError(t, err)
	assert.Equal(t, StatusRunning, jobs[0].Status)
	assert.Equal(t, StatusPending, jobs[2].Status)

	// Enqueue is all or nothing.
	bad := queueRequest("")
	_, err = s.Enqueue(ctx, 0, []request.Request{queueRequest("d"), bad})
	require.Error(t, err)
	assert.Equal(t, []string{"c"}, waitingOrder(t, s))

	// A generate job is not a queue job.
	_, err = s.CreateJob(ctx, "direct", sampleRequest("direct"))
	require.NoError(t, err)
	third, err := s.ClaimNext(ctx)
	require.NoError(t, err)
	assert.Equal(t, ids[2], third.ID)
	none, err := s.ClaimNext(ctx)
	require.NoError(t, err)
	assert.Nil(t, none)
}

func TestClaimIsExclusiveAcrossConnections(t *testing.T) {
	s, path := openTestStore(t)
	ctx := context.Background()
	ids := enqueue(t, s, 0, "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12")

	// Four stores (as four processes would) claim concurrently.
	var mu sync.Mutex
	seen := map[int64]int{}
	var wg sync.WaitGroup
	for range 4 {
		other, err := OpenStore(path)
		require.NoError(t, err)
		defer other.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				j, err := other.ClaimNext(ctx)
				if err != nil || j == nil {
					return
				}
				mu.Lock()
				seen[j.ID]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	require.Len(t, seen, len(ids))
	for _, id := range ids {
		assert.Equal(t, 1, seen[id], "job %d claimed %d times", id, seen[id])
	}
}

func TestMoveJob(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	ids := enqueue(t, s, 0, "a", "b", "c", "d")

	require.NoError(t, s.MoveJob(ctx, ids[2], MoveUp))
	assert.Equal(t, []string{"a", "c", "b", "d"}, waitingOrder(t, s))
	require.NoError(t, s.MoveJob(ctx, ids[0], MoveDown))
	assert.Equal(t, []string{"c", "a", "b", "d"}, waitingOrder(t, s))
	require.NoError(t, s.MoveJob(ctx, ids[3], MoveTop))
	assert.Equal(t, []string{"d", "c", "a", "b"}, waitingOrder(t, s))
	require.NoError(t, s.MoveJob(ctx, ids[3], MoveUp), "moving the first job up is a no-op")
	require.NoError(t, s.MoveJob(ctx, ids[3], MoveBottom))
	assert.Equal(t, []string{"c", "a", "b", "d"}, waitingOrder(t, s))

	// The claimed order follows the moves.
	j, err := s.ClaimNext(ctx)
	require.NoError(t, err)
	assert.Equal(t, "c", j.Request.Prompt)
	assert.ErrorIs(t, s.MoveJob(ctx, j.ID, MoveDown), ErrNotPending, "a running job cannot move")
	assert.ErrorIs(t, s.MoveJob(ctx, 9999, MoveDown), ErrNotFound)
}

func TestEditCancelRetryClear(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	ids := enqueue(t, s, 0, "a", "b", "c")

	edited := queueRequest("a, edited")
	edited.Steps = 3
	require.NoError(t, s.UpdatePendingJob(ctx, ids[0], edited))
	j, err := s.GetQueueJob(ctx, ids[0])
	require.NoError(t, err)
	assert.Equal(t, "a, edited", j.Request.Prompt)
	assert.Equal(t, 3, j.Request.Steps)
	// The search index follows the edit.
	var hits int
	require.NoError(t, s.db.QueryRow(`SELECT COUNT(*) FROM jobs_fts WHERE jobs_fts MATCH 'edited'`).Scan(&hits))
	assert.Equal(t, 1, hits)
	bad := edited
	bad.Steps = 0
	_, isValidation := request.AsValidation(s.UpdatePendingJob(ctx, ids[0], bad))
	assert.True(t, isValidation)

	st, err := s.CancelJob(ctx, ids[1])
	require.NoError(t, err)
	assert.Equal(t, StatusCancelled, st)
	assert.Equal(t, []string{"a, edited", "c"}, waitingOrder(t, s))
	_, err = s.CancelJob(ctx, ids[1])
	assert.Error(t, err, "cancelling twice says so")

	running, err := s.ClaimNext(ctx)
	require.NoError(t, err)
	assert.ErrorIs(t, s.UpdatePendingJob(ctx, running.ID, edited), ErrNotPending)
	st, err = s.CancelJob(ctx, running.ID)
	require.NoError(t, err)
	assert.Equal(t, StatusRunning, st, "a running job is flagged; its process stops it")
	yes, err := s.CancelRequested(ctx, running.ID)
	require.NoError(t, err)
	assert.True(t, yes)

	// Retry makes a new pending job with the same settings.
	newID, err := s.RetryJob(ctx, ids[1])
	require.NoError(t, err)
	nj, err := s.GetQueueJob(ctx, newID)
	require.NoError(t, err)
	assert.Equal(t, StatusPending, nj.Status)
	assert.Equal(t, "b", nj.Request.Prompt)
	assert.Equal(t, []string{"c", "b"}, waitingOrder(t, s), "a retry goes to the end")
	_, err = s.RetryJob(ctx, ids[2])
	assert.Error(t, err, "a pending job cannot be retried")

	// Clear removes finished jobs from the view, and keeps them in the history.
	require.NoError(t, s.FinishJob(ctx, running.ID, &protocol.Metrics{TotalS: 1}, nil))
	n, err := s.ClearQueue(ctx, false)
	require.NoError(t, err)
	assert.Equal(t, 2, n) // the done one and the cancelled one
	jobs, err := s.QueueJobs(ctx)
	require.NoError(t, err)
	assert.Len(t, jobs, 2)
	_, err = s.GetJob(ctx, running.ID)
	assert.NoError(t, err)
	n, err = s.ClearQueue(ctx, true)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	assert.Empty(t, waitingOrder(t, s))
}

func TestPauseAndRetriesSettings(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	p, err := s.QueuePaused(ctx)
	require.NoError(t, err)
	assert.False(t, p)
	require.NoError(t, s.SetQueuePaused(ctx, true))
	p, err = s.QueuePaused(ctx)
	require.NoError(t, err)
	assert.True(t, p)
	assert.Equal(t, DefaultQueueRetries, s.QueueRetries(ctx))
	require.NoError(t, s.SetQueueRetries(ctx, 3))
	assert.Equal(t, 3, s.QueueRetries(ctx))
	assert.Error(t, s.SetQueueRetries(ctx, -1))
}

func TestMeasuredRate(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	r, err := s.MeasuredRate(ctx, 10)
	require.NoError(t, err)
	assert.False(t, r.Known())
	req := queueRequest("x") // 64x64, batch 1, 4 steps
	id, err := s.CreateJob(ctx, "m1", req)
	require.NoError(t, err)
	require.NoError(t, s.FinishJob(ctx, id, &protocol.Metrics{TotalS: 3, DenoiseS: 2, ItS: 2}, nil))
	r, err = s.MeasuredRate(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, 1, r.Samples)
	assert.InDelta(t, 64*64*4/2.0, r.PixelStepsPerS, 1e-9)
	assert.InDelta(t, 1, r.OverheadS, 1e-9)

	// A hires job's denoising time includes its second pass (2x: 128x128,
	// 4 steps x 0.5): that work counts too.
	hires := queueRequest("y")
	hires.HiresScale = 2
	id, err = s.CreateJob(ctx, "m2", hires)
	require.NoError(t, err)
	require.NoError(t, s.FinishJob(ctx, id, &protocol.Metrics{TotalS: 5, DenoiseS: 4, ItS: 2}, nil))
	r, err = s.MeasuredRate(ctx, 10)
	require.NoError(t, err)
	work := 64*64*4.0 + 64*64*4 + 128*128*4*0.5
	assert.InDelta(t, work/6, r.PixelStepsPerS, 1e-9)
	first, _ := r.Estimate(req)
	second, _ := r.Estimate(hires)
	assert.InDelta(t, (64*64*4+128*128*4*0.5)/r.PixelStepsPerS+r.OverheadS, second.Seconds(), 1e-6)
	assert.Greater(t, second, first, "the hires pass adds to the estimate")
	up := queueRequest("z")
	up.UpscaleOnly, up.InitImage, up.Upscaler = true, "/in.png", request.LanczosUpscaler
	third, _ := r.Estimate(up)
	assert.InDelta(t, r.OverheadS, third.Seconds(), 1e-6, "an upscale alone denoises nothing")
}

func TestQueueJobsKeepsEveryWaitingJobAndTheNewestFinished(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	reqs := make([]request.Request, QueueFinishedShown+20)
	for i := range reqs {
		reqs[i] = queueRequest(fmt.Sprintf("job %d", i))
	}
	ids, err := s.Enqueue(ctx, 0, reqs)
	require.NoError(t, err)
	// All but the last 10 finish (straight in SQL: this is about the listing).
	_, err = s.db.Exec(`UPDATE jobs SET status = 'done', finished_at = created_at WHERE id <= ?`, ids[len(ids)-11])
	require.NoError(t, err)
	jobs, err := s.QueueJobs(ctx)
	require.NoError(t, err)
	require.Len(t, jobs, 10+QueueFinishedShown)
	for i, j := range jobs[:10] {
		assert.Equal(t, StatusPending, j.Status)
		assert.Equal(t, ids[len(ids)-10+i], j.ID, "waiting jobs in queue order")
	}
	assert.Equal(t, ids[len(ids)-11], jobs[10].ID, "then the newest finished one")
	counts, err := s.QueueCounts(ctx)
	require.NoError(t, err)
	assert.Equal(t, len(ids)-10, counts[StatusDone], "the counts cover every job")
}

// tinyRequest is the runner tests' small valid request.
func tinyRequest() request.Request {
	r := request.DefaultRequest()
	r.Prompt, r.Steps, r.Width, r.Height = "a lighthouse", 4, 64, 64
	return r
}

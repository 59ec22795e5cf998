package jobs

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"atelier/core/failure"
	"atelier/core/paths"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// scriptedGen is a Generator double for the runner's bookkeeping edge cases;
// the real path (bridge and worker) is tested end to end in cmd/atelier.
type scriptedGen struct {
	// play sends the job's messages; cancel is closed when Cancel is called.
	play      func(id string, req request.Request, out chan<- protocol.Message, cancel <-chan struct{})
	submitErr error

	mu        sync.Mutex
	submitted []request.Request
	cancels   []string
	cancel    chan struct{}
}

func (g *scriptedGen) Submit(ctx context.Context, id string, req request.Request) (<-chan protocol.Message, error) {
	g.mu.Lock()
	g.submitted = append(g.submitted, req)
	g.cancel = make(chan struct{})
	cancel := g.cancel
	g.mu.Unlock()
	if g.submitErr != nil {
		return nil, g.submitErr
	}
	out := make(chan protocol.Message)
	go func() {
		defer close(out)
		g.play(id, req, out, cancel)
	}()
	return out, nil
}

func (g *scriptedGen) Cancel(id string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.cancels = append(g.cancels, id)
	if g.cancel != nil {
		close(g.cancel)
		g.cancel = nil
	}
	return nil
}

func resultFor(id string, req request.Request) protocol.Message {
	return protocol.Result{ID: id,
		Images:  []protocol.ImageResult{{Path: filepath.Join(req.OutputDir, id+"-0.png"), Seed: req.Seed, Width: req.Width, Height: req.Height}},
		Metrics: &protocol.Metrics{TotalS: 0.5, Device: "cpu", Dtype: "float32"}}
}

func newTestRunner(t *testing.T, g *scriptedGen) (*Runner, *store.Store, paths.Paths) {
	t.Helper()
	paths := paths.PathsUnder(t.TempDir())
	s, err := store.OpenStore(paths.DB)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return NewRunner(s, g, paths), s, paths
}

func tinyRequest() request.Request {
	r := request.DefaultRequest()
	r.Prompt, r.Steps, r.Width, r.Height = "a lighthouse", 4, 64, 64
	return r
}

func onlyJob(t *testing.T, s *store.Store) store.JobRecord {
	t.Helper()
	jobs, err := s.ListJobs(context.Background(), 0)
	require.NoError(t, err)
	require.Len(t, jobs, 1)
	return jobs[0]
}

func TestRunRecordsAResult(t *testing.T) {
	g := &scriptedGen{play: func(id string, req request.Request, out chan<- protocol.Message, _ <-chan struct{}) {
		out <- protocol.Accepted{ID: id}
		out <- protocol.Progress{ID: id, Stage: "denoising", Step: 1, Total: 4}
		out <- resultFor(id, req)
	}}
	r, s, paths := newTestRunner(t, g)

	var events []string
	req := tinyRequest()
	req.Seed = -1
	out, err := r.Run(context.Background(), req, func(m protocol.Message) { events = append(events, m.Type()) })
	require.NoError(t, err)
	assert.Equal(t, []string{protocol.MsgAccepted, protocol.MsgProgress, protocol.MsgResult}, events)

	sent := g.submitted[0]
	assert.GreaterOrEqual(t, sent.Seed, int64(0), "seed -1 must be resolved before sending")
	assert.Equal(t, filepath.Join(paths.Images, time.Now().Format("2006-01-02")), sent.OutputDir)
	assert.DirExists(t, sent.OutputDir)

	j := onlyJob(t, s)
	assert.Equal(t, store.StatusDone, j.Status)
	assert.Equal(t, out.UID, j.UID)
	assert.Equal(t, out.JobID, j.ID)
	assert.Equal(t, sent.Seed, j.Request.Seed, "the history records the resolved seed")
	require.Len(t, j.Images, 1)
	assert.Equal(t, out.Images[0].Path, j.Images[0].Path)
	assert.Equal(t, "cpu", j.Metrics.Device)
	assert.True(t, protocol.ValidID(out.UID), out.UID)
}

func TestRunRefusesBadInputWithoutARow(t *testing.T) {
	modelDir := t.TempDir()
	noUnet := filepath.Join(modelDir, "no-unet")
	require.NoError(t, os.MkdirAll(noUnet, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(noUnet, "model_index.json"), []byte("{}"), 0o644))
	pickle := filepath.Join(modelDir, "model.ckpt")
	require.NoError(t, os.WriteFile(pickle, []byte("x"), 0o644))

	for _, tc := range []struct {
		name  string
		edit  func(*request.Request)
		field string
	}{
		{"steps 0", func(r *request.Request) { r.Steps = 0 }, "steps"},
		{"width 63", func(r *request.Request) { r.Width = 63 }, "width"},
		{"empty prompt", func(r *request.Request) { r.Prompt = " " }, "prompt"},
		{"missing model", func(r *request.Request) { r.Model = filepath.Join(modelDir, "nope") }, "model"},
		{"no unet", func(r *request.Request) { r.Model = noUnet }, "model"},
		{"pickle", func(r *request.Request) { r.Model = pickle }, "model"},
		{"seed overflow", func(r *request.Request) { r.Seed, r.BatchSize = request.MaxSeed, 2 }, "seed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &scriptedGen{play: func(string, request.Request, chan<- protocol.Message, <-chan struct{}) { t.Error("must not generate") }}
			r, s, paths := newTestRunner(t, g)
			req := tinyRequest()
			tc.edit(&req)
			_, err := r.Run(context.Background(), req, nil)
			require.Error(t, err)
			assert.Equal(t, tc.field, errorField(err), err.Error())
			jobs, lerr := s.ListJobs(context.Background(), 0)
			require.NoError(t, lerr)
			assert.Empty(t, jobs, "bad input must leave no job row")
			assert.NoDirExists(t, paths.Images, "bad input must leave no file")
			assert.Empty(t, g.submitted)
		})
	}
}

// errorField is the field a runner error names, whichever type it is.
func errorField(err error) string {
	if v, ok := request.AsValidation(err); ok {
		return v.Fields[0].Field
	}
	var jerr *failure.JobError
	if errors.As(err, &jerr) {
		return jerr.Field
	}
	return ""
}

func TestRunRecordsAWorkerError(t *testing.T) {
	for _, tc := range []struct {
		code   failure.ErrorCode
		status string
	}{
		{failure.ErrOutOfMemory, store.StatusFailed},
		{failure.ErrCancelled, store.StatusCancelled},
		{"made_up", store.StatusFailed},
	} {
		t.Run(string(tc.code), func(t *testing.T) {
			g := &scriptedGen{play: func(id string, _ request.Request, out chan<- protocol.Message, _ <-chan struct{}) {
				out <- protocol.Accepted{ID: id}
				out <- protocol.Error{ID: id, Code: tc.code, Message: "it broke", Detail: "trace"}
			}}
			r, s, _ := newTestRunner(t, g)
			_, err := r.Run(context.Background(), tinyRequest(), nil)
			var jerr *failure.JobError
			require.ErrorAs(t, err, &jerr)
			j := onlyJob(t, s)
			assert.Equal(t, tc.status, j.Status)
			assert.Equal(t, "it broke", j.ErrorMessage)
			if tc.code.Valid() {
				assert.Equal(t, tc.code, jerr.Code)
			} else {
				assert.Equal(t, failure.ErrInternal, jerr.Code, "a code outside the closed set becomes internal")
				assert.Contains(t, jerr.Detail, "made_up")
			}
			assert.Equal(t, string(jerr.Code), j.ErrorCode)
		})
	}
}

func TestRunRecordsAWorkerDiskFull(t *testing.T) {
	g := &scriptedGen{play: func(id string, _ request.Request, out chan<- protocol.Message, _ <-chan struct{}) {
		out <- protocol.Accepted{ID: id}
		out <- protocol.Error{ID: id, Code: failure.ErrDiskFull, Message: "the disk is full (/x): saving image 2 of 2 failed"}
	}}
	r, s, _ := newTestRunner(t, g)
	_, err := r.Run(context.Background(), tinyRequest(), nil)
	var jerr *failure.JobError
	require.ErrorAs(t, err, &jerr)
	assert.Equal(t, failure.ErrDiskFull, jerr.Code)
	assert.Empty(t, jerr.Field, "a full disk is no wrong field")
	j := onlyJob(t, s)
	assert.Equal(t, store.StatusFailed, j.Status)
	assert.Equal(t, string(failure.ErrDiskFull), j.ErrorCode)
}

// A result the history cannot record leaves none of its files behind: they
// would be on disk with no history entry pointing to them.
func TestRunRemovesTheFilesOfAResultItCannotRecord(t *testing.T) {
	var files []string
	block := func(t *testing.T, dbPath, stmt string) {
		db, err := sql.Open("sqlite3", dbPath)
		require.NoError(t, err)
		defer db.Close()
		_, err = db.Exec(stmt)
		require.NoError(t, err)
	}
	var dbPath string
	g := &scriptedGen{play: func(id string, req request.Request, out chan<- protocol.Message, _ <-chan struct{}) {
		res := resultFor(id, req).(protocol.Result)
		res.Images = append(res.Images, protocol.ImageResult{Path: filepath.Join(req.OutputDir, id+"-1.png"), Seed: req.Seed + 1, Width: 64, Height: 64})
		res.ControlImages = []string{filepath.Join(req.OutputDir, id+"-control-0.png")}
		files = append(imagePaths(res.Images), res.ControlImages...)
		for _, p := range files {
			require.NoError(t, os.WriteFile(p, []byte("png"), 0o644))
		}
		// The history refuses the images, as a full disk would make it.
		block(t, dbPath, `CREATE TRIGGER refuse BEFORE INSERT ON images BEGIN SELECT RAISE(ABORT, 'no room'); END`)
		out <- protocol.Accepted{ID: id}
		out <- res
	}}
	r, s, paths := newTestRunner(t, g)
	dbPath = paths.DB
	out, err := r.Run(context.Background(), tinyRequest(), nil)
	assert.Nil(t, out, "no outcome names files that are gone")
	var jerr *failure.JobError
	require.ErrorAs(t, err, &jerr)
	assert.Equal(t, failure.ErrInternal, jerr.Code, "SQLite's trigger error is not a full disk")
	assert.Contains(t, jerr.Message, "3 file(s) were made, but the history could not record them")
	assert.Contains(t, jerr.Message, "they were removed")
	assert.Contains(t, jerr.Detail, "no room")
	require.Len(t, files, 3)
	for _, p := range files {
		assert.NoFileExists(t, p)
	}
	j := onlyJob(t, s)
	assert.Equal(t, store.StatusFailed, j.Status)
	assert.Equal(t, string(failure.ErrInternal), j.ErrorCode)
	assert.Empty(t, j.Images)

	block(t, dbPath, `DROP TRIGGER refuse`)
	g.play = func(id string, req request.Request, out chan<- protocol.Message, _ <-chan struct{}) {
		out <- protocol.Accepted{ID: id}
		out <- resultFor(id, req)
	}
	_, err = r.Run(context.Background(), tinyRequest(), nil)
	require.NoError(t, err, "the next job runs and is recorded")
}

func TestRunRecordsASubmitFailure(t *testing.T) {
	g := &scriptedGen{submitErr: &failure.JobError{Code: failure.ErrWorkerCrashed, Message: "the worker did not start", Detail: "ImportError: torch"}}
	r, s, _ := newTestRunner(t, g)
	_, err := r.Run(context.Background(), tinyRequest(), nil)
	var jerr *failure.JobError
	require.ErrorAs(t, err, &jerr)
	assert.Equal(t, failure.ErrWorkerCrashed, jerr.Code)
	j := onlyJob(t, s)
	assert.Equal(t, store.StatusFailed, j.Status)
	assert.Equal(t, "ImportError: torch", j.ErrorDetail)

	g = &scriptedGen{submitErr: errors.New("pipe closed")}
	r, s, _ = newTestRunner(t, g)
	_, err = r.Run(context.Background(), tinyRequest(), nil)
	require.ErrorAs(t, err, &jerr)
	assert.Equal(t, failure.ErrInternal, jerr.Code)
	assert.Contains(t, jerr.Message, "pipe closed")
	assert.Equal(t, store.StatusFailed, onlyJob(t, s).Status)
}

func TestRunStreamEndingWithoutResultIsACrash(t *testing.T) {
	g := &scriptedGen{play: func(id string, _ request.Request, out chan<- protocol.Message, _ <-chan struct{}) {
		out <- protocol.Accepted{ID: id}
	}}
	r, s, _ := newTestRunner(t, g)
	_, err := r.Run(context.Background(), tinyRequest(), nil)
	var jerr *failure.JobError
	require.ErrorAs(t, err, &jerr)
	assert.Equal(t, failure.ErrWorkerCrashed, jerr.Code)
	assert.Equal(t, store.StatusFailed, onlyJob(t, s).Status)
}

func TestRunCancelledByContext(t *testing.T) {
	started := make(chan struct{})
	g := &scriptedGen{play: func(id string, _ request.Request, out chan<- protocol.Message, cancel <-chan struct{}) {
		out <- protocol.Accepted{ID: id}
		close(started)
		<-cancel // the worker sees the cancel at its next step
		out <- protocol.Error{ID: id, Code: failure.ErrCancelled, Message: "cancelled"}
	}}
	r, s, _ := newTestRunner(t, g)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()

	_, err := r.Run(ctx, tinyRequest(), nil)
	var jerr *failure.JobError
	require.ErrorAs(t, err, &jerr)
	assert.Equal(t, failure.ErrCancelled, jerr.Code)
	j := onlyJob(t, s)
	assert.Equal(t, store.StatusCancelled, j.Status, "the outcome is recorded although ctx is done")
	assert.Equal(t, []string{j.UID}, g.cancels)
}

func TestRunCancelGivesUpOnASilentGenerator(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	g := &scriptedGen{play: func(id string, _ request.Request, out chan<- protocol.Message, _ <-chan struct{}) {
		out <- protocol.Accepted{ID: id}
		<-release // ignores the cancel
	}}
	r, s, _ := newTestRunner(t, g)
	r.CancelGrace = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	_, err := r.Run(ctx, tinyRequest(), func(m protocol.Message) {
		if m.Type() == protocol.MsgAccepted {
			cancel()
		}
	})
	var jerr *failure.JobError
	require.ErrorAs(t, err, &jerr)
	assert.Equal(t, failure.ErrCancelled, jerr.Code)
	assert.Equal(t, store.StatusCancelled, onlyJob(t, s).Status)
	assert.Len(t, g.cancels, 1)
}

func TestRunKeepsAResultThatBeatTheCancel(t *testing.T) {
	g := &scriptedGen{play: func(id string, req request.Request, out chan<- protocol.Message, cancel <-chan struct{}) {
		out <- protocol.Accepted{ID: id}
		<-cancel
		out <- resultFor(id, req) // the last step was already done
	}}
	r, s, _ := newTestRunner(t, g)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, err := r.Run(ctx, tinyRequest(), func(m protocol.Message) {
		if m.Type() == protocol.MsgAccepted {
			cancel()
		}
	})
	require.NoError(t, err)
	require.Len(t, out.Images, 1)
	assert.Equal(t, store.StatusDone, onlyJob(t, s).Status)
}

func TestRunAlreadyCancelledLeavesNoRow(t *testing.T) {
	g := &scriptedGen{play: func(string, request.Request, chan<- protocol.Message, <-chan struct{}) { t.Error("must not generate") }}
	r, s, _ := newTestRunner(t, g)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := r.Run(ctx, tinyRequest(), nil)
	var jerr *failure.JobError
	require.ErrorAs(t, err, &jerr)
	assert.Equal(t, failure.ErrCancelled, jerr.Code)
	jobs, err := s.ListJobs(context.Background(), 0)
	require.NoError(t, err)
	assert.Empty(t, jobs)
}

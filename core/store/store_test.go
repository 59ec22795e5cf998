package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"

	"atelier/core/failure"
	"atelier/core/protocol"
	"atelier/core/request"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func openTestStore(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "history.db")
	s, err := OpenStore(path)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s, path
}

func sampleRequest(prompt string) request.Request {
	r := request.DefaultRequest()
	r.Prompt, r.NegativePrompt = prompt, "fog"
	r.Steps, r.Width, r.Height, r.Seed, r.BatchSize = 4, 64, 64, 7, 2
	r.OutputDir = "/tmp/out"
	return r
}

func tableNames(t *testing.T, db *sql.DB) []string {
	t.Helper()
	rows, err := db.Query(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`)
	require.NoError(t, err)
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		require.NoError(t, rows.Scan(&n))
		names = append(names, n)
	}
	return names
}

type migrationRow struct {
	Version   int
	Name      string
	AppliedAt string
}

func appliedMigrations(t *testing.T, db *sql.DB) []migrationRow {
	t.Helper()
	rows, err := db.Query(`SELECT version, name, applied_at FROM schema_migrations ORDER BY version`)
	require.NoError(t, err)
	defer rows.Close()
	var out []migrationRow
	for rows.Next() {
		var m migrationRow
		require.NoError(t, rows.Scan(&m.Version, &m.Name, &m.AppliedAt))
		out = append(out, m)
	}
	return out
}

func TestOpenStoreMigratesAnEmptyDatabase(t *testing.T) {
	s, _ := openTestStore(t)

	names := tableNames(t, s.db)
	for _, want := range []string{"jobs", "images", "settings", "jobs_fts", "schema_migrations"} {
		assert.Contains(t, names, want)
	}
	applied := appliedMigrations(t, s.db)
	require.Len(t, applied, len(migrations))
	assert.Equal(t, SchemaVersion(), applied[len(applied)-1].Version)

	var mode string
	var fk int
	require.NoError(t, s.db.QueryRow(`PRAGMA journal_mode`).Scan(&mode))
	require.NoError(t, s.db.QueryRow(`PRAGMA foreign_keys`).Scan(&fk))
	assert.Equal(t, "wal", mode)
	assert.Equal(t, 1, fk)
}

func TestOpenStoreAgainIsANoOp(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dir with space", "history.db")
	s, err := OpenStore(path)
	require.NoError(t, err)
	id, err := s.CreateJob(context.Background(), "job-1", sampleRequest("a lighthouse"))
	require.NoError(t, err)
	before := appliedMigrations(t, s.db)
	require.NoError(t, s.Close())

	s, err = OpenStore(path)
	require.NoError(t, err)
	defer s.Close()
	assert.Equal(t, before, appliedMigrations(t, s.db), "re-opening must not re-apply or re-record a migration")
	j, err := s.GetJob(context.Background(), id)
	require.NoError(t, err)
	assert.Equal(t, "a lighthouse", j.Request.Prompt)
	assert.Equal(t, StatusRunning, j.Status, "this process is alive, so its job stays running")
}

func TestMigrationFailureRollsBack(t *testing.T) {
	db, err := openDB(filepath.Join(t.TempDir(), "m.db"))
	require.NoError(t, err)
	defer db.Close()
	ctx := context.Background()

	good := migration{1, "first", `CREATE TABLE a (x INTEGER)`}
	require.NoError(t, migrate(ctx, db, []migration{good}))

	// The second step's first statement succeeds and its second fails: the
	// first must not survive.
	bad := migration{2, "second", `CREATE TABLE b (x INTEGER); INSERT INTO a VALUES (1); INSERT INTO missing VALUES (1);`}
	err = migrate(ctx, db, []migration{good, bad})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "migrate to 2 (second)")
	assert.Contains(t, err.Error(), "missing")

	assert.NotContains(t, tableNames(t, db), "b")
	var n int
	require.NoError(t, db.QueryRow(`SELECT COUNT(*) FROM a`).Scan(&n))
	assert.Zero(t, n, "the insert of the failed step must be rolled back")
	applied := appliedMigrations(t, db)
	require.Len(t, applied, 1)
	assert.Equal(t, 1, applied[0].Version)

	// Once fixed, the step applies.
	fixed := migration{2, "second", `CREATE TABLE b (x INTEGER)`}
	require.NoError(t, migrate(ctx, db, []migration{good, fixed}))
	assert.Contains(t, tableNames(t, db), "b")
}

func TestMigrateRefusesANewerSchema(t *testing.T) {
	db, err := openDB(filepath.Join(t.TempDir(), "m.db"))
	require.NoError(t, err)
	defer db.Close()
	ctx := context.Background()
	two := []migration{{1, "one", `CREATE TABLE a (x)`}, {2, "two", `CREATE TABLE b (x)`}}
	require.NoError(t, migrate(ctx, db, two))

	err = migrate(ctx, db, two[:1])
	require.Error(t, err)
	assert.Contains(t, err.Error(), "newer Atelier")
}

func TestMigrateRefusesGaps(t *testing.T) {
	db, err := openDB(filepath.Join(t.TempDir(), "m.db"))
	require.NoError(t, err)
	defer db.Close()
	err = migrate(context.Background(), db, []migration{{1, "one", `CREATE TABLE a (x)`}, {3, "three", `CREATE TABLE c (x)`}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "without gaps")
}

func TestJobLifecycle(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	req := sampleRequest("a lighthouse at dusk")

	id, err := s.CreateJob(ctx, "job-life", req)
	require.NoError(t, err)
	j, err := s.GetJob(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, StatusRunning, j.Status)
	assert.Equal(t, "job-life", j.UID)
	assert.Equal(t, req, j.Request)
	assert.NotNil(t, j.StartedAt)
	assert.Nil(t, j.FinishedAt)
	assert.Nil(t, j.Metrics)

	m := &protocol.Metrics{TotalS: 1.5, LoadS: 0.5, DenoiseS: 0.9, ItS: 4.4, Device: "cpu", Dtype: "float32", PeakMemBytes: 1234,
		Versions: map[string]string{"torch": "2.9.1", "diffusers": "0.36.0"}, Speed: map[string]string{"compile": "off"}}
	imgs := []protocol.ImageResult{{Path: "/img/a.png", Seed: 7, Width: 64, Height: 64}, {Path: "/img/b.png", Seed: 8, Width: 64, Height: 64}}
	require.NoError(t, s.FinishJob(ctx, id, m, imgs))
	detail, err := s.GetImage(ctx, 1)
	require.NoError(t, err)
	assert.Equal(t, m, detail.Metrics, "the gallery's detail reads the same metrics, versions and speed included")

	j, err = s.GetJobByUID(ctx, "job-life")
	require.NoError(t, err)
	assert.Equal(t, StatusDone, j.Status)
	assert.NotNil(t, j.FinishedAt)
	assert.Equal(t, m, j.Metrics)
	require.Len(t, j.Images, 2)
	assert.Equal(t, "/img/a.png", j.Images[0].Path)
	assert.Equal(t, int64(8), j.Images[1].Seed)
	assert.Equal(t, req.Prompt, j.Images[0].Prompt)

	// Each image's metadata reproduces that image alone.
	var meta string
	require.NoError(t, s.db.QueryRow(`SELECT metadata FROM images WHERE path = '/img/b.png'`).Scan(&meta))
	assert.Contains(t, meta, `"seed":8`)
	assert.NotContains(t, meta, `"batch_size":2`)

	assert.Error(t, s.FinishJob(ctx, id, m, imgs), "a done job cannot be finished twice")
	assert.Error(t, s.FailJob(ctx, id, &failure.JobError{Code: failure.ErrInternal, Message: "x"}), "a done job cannot fail")
}

func TestFailJobStatus(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	for _, tc := range []struct {
		code failure.ErrorCode
		want string
	}{
		{failure.ErrCancelled, StatusCancelled},
		{failure.ErrWorkerCrashed, StatusFailed},
		{failure.ErrOutOfMemory, StatusFailed},
	} {
		t.Run(string(tc.code), func(t *testing.T) {
			id, err := s.CreateJob(ctx, "fail-"+string(tc.code), sampleRequest("p"))
			require.NoError(t, err)
			require.NoError(t, s.FailJob(ctx, id, &failure.JobError{Code: tc.code, Message: "what happened", Detail: "stderr tail"}))
			j, err := s.GetJob(ctx, id)
			require.NoError(t, err)
			assert.Equal(t, tc.want, j.Status)
			assert.Equal(t, string(tc.code), j.ErrorCode)
			assert.Equal(t, "what happened", j.ErrorMessage)
			assert.Equal(t, "stderr tail", j.ErrorDetail)
			assert.NotNil(t, j.FinishedAt)
			assert.Error(t, s.FinishJob(ctx, id, nil, nil), "a failed job cannot turn done")
		})
	}
	assert.ErrorIs(t, s.FailJob(ctx, 9999, &failure.JobError{Code: failure.ErrInternal}), ErrNotFound)
	_, err := s.GetJob(ctx, 9999)
	assert.ErrorIs(t, err, ErrNotFound)
}

func TestFinishJobIsAtomic(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	id, err := s.CreateJob(ctx, "atomic", sampleRequest("p"))
	require.NoError(t, err)

	// The second image breaks a table constraint after the job row and the
	// first image were written inside the transaction.
	m := &protocol.Metrics{TotalS: 2}
	bad := []protocol.ImageResult{{Path: "/img/ok.png", Seed: 1, Width: 64, Height: 64}, {Path: "/img/bad.png", Seed: 2, Width: 0, Height: 64}}
	require.Error(t, s.FinishJob(ctx, id, m, bad))

	j, err := s.GetJob(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, StatusRunning, j.Status, "the status change must roll back with the images")
	assert.Nil(t, j.Metrics)
	assert.Empty(t, j.Images)
	var n int
	require.NoError(t, s.db.QueryRow(`SELECT COUNT(*) FROM images`).Scan(&n))
	assert.Zero(t, n)

	require.NoError(t, s.FinishJob(ctx, id, m, bad[:1]))
	j, err = s.GetJob(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, StatusDone, j.Status)
	assert.Len(t, j.Images, 1)
}

func TestListJobsAndRecentImages(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	for i := 1; i <= 4; i++ {
		req := sampleRequest(fmt.Sprintf("prompt %d", i))
		req.Model = fmt.Sprintf("model-%d", i)
		id, err := s.CreateJob(ctx, fmt.Sprintf("job-%d", i), req)
		require.NoError(t, err)
		if i%2 == 0 {
			require.NoError(t, s.FailJob(ctx, id, &failure.JobError{Code: failure.ErrInternal, Message: "boom"}))
			continue
		}
		require.NoError(t, s.FinishJob(ctx, id, &protocol.Metrics{TotalS: float64(i)}, []protocol.ImageResult{
			{Path: fmt.Sprintf("/img/%d-a.png", i), Seed: int64(i), Width: 64, Height: 64},
			{Path: fmt.Sprintf("/img/%d-b.png", i), Seed: int64(i + 1), Width: 64, Height: 64},
		}))
	}

	jobs, err := s.ListJobs(ctx, 3)
	require.NoError(t, err)
	require.Len(t, jobs, 3)
	assert.Equal(t, []string{"job-4", "job-3", "job-2"}, []string{jobs[0].UID, jobs[1].UID, jobs[2].UID})
	assert.Empty(t, jobs[0].Images)
	require.Len(t, jobs[1].Images, 2, "a listed job carries its images")
	assert.Equal(t, "/img/3-a.png", jobs[1].Images[0].Path)
	assert.Equal(t, 3.0, jobs[1].Metrics.TotalS)
	assert.Equal(t, "boom", jobs[2].ErrorMessage)

	all, err := s.ListJobs(ctx, 0)
	require.NoError(t, err)
	assert.Len(t, all, 4)

	imgs, err := s.RecentImages(ctx, 3)
	require.NoError(t, err)
	require.Len(t, imgs, 3)
	assert.Equal(t, []string{"/img/3-b.png", "/img/3-a.png", "/img/1-b.png"}, []string{imgs[0].Path, imgs[1].Path, imgs[2].Path})
	assert.Equal(t, "prompt 3", imgs[0].Prompt)
	assert.Equal(t, "model-3", imgs[0].Model)
	assert.Equal(t, "prompt 1", imgs[2].Prompt)
	assert.False(t, imgs[0].CreatedAt.IsZero())
}

func TestPromptSearchIndexFollowsJobs(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	id, err := s.CreateJob(ctx, "fts", sampleRequest("a red lighthouse"))
	require.NoError(t, err)
	_, err = s.CreateJob(ctx, "other", sampleRequest("a green forest"))
	require.NoError(t, err)

	match := func(q string) []int64 {
		rows, err := s.db.Query(`SELECT rowid FROM jobs_fts WHERE jobs_fts MATCH ? ORDER BY rowid`, q)
		require.NoError(t, err)
		defer rows.Close()
		var ids []int64
		for rows.Next() {
			var id int64
			require.NoError(t, rows.Scan(&id))
			ids = append(ids, id)
		}
		return ids
	}
	assert.Equal(t, []int64{id}, match("lighthouse"))
	assert.Len(t, match("fog"), 2, "the negative prompt is indexed too")

	_, err = s.db.Exec(`UPDATE jobs SET prompt = 'a blue boat' WHERE id = ?`, id)
	require.NoError(t, err)
	assert.Empty(t, match("lighthouse"), "an update must drop the old words")
	assert.Equal(t, []int64{id}, match("boat"))

	_, err = s.db.Exec(`DELETE FROM jobs WHERE id = ?`, id)
	require.NoError(t, err)
	assert.Empty(t, match("boat"))
	var check string
	require.NoError(t, s.db.QueryRow(`INSERT INTO jobs_fts(jobs_fts, rank) VALUES ('integrity-check', 1) RETURNING 'ok'`).Scan(&check))
}

func TestSettings(t *testing.T) {
	s, _ := openTestStore(t)
	ctx := context.Background()
	_, ok, err := s.GetSetting(ctx, "theme")
	require.NoError(t, err)
	assert.False(t, ok)
	require.NoError(t, s.SetSetting(ctx, "theme", "dark"))
	require.NoError(t, s.SetSetting(ctx, "theme", "light"))
	v, ok, err := s.GetSetting(ctx, "theme")
	require.NoError(t, err)
	assert.True(t, ok)
	assert.Equal(t, "light", v)
}

// A history written before jobs recorded their versions and speed settings
// opens, keeps its jobs readable (without them), and records them from now on.
func TestOlderHistoryGainsVersionsAndSpeed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "history.db")
	db, err := openDB(path)
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, migrate(ctx, db, migrations[:2]))
	params, err := json.Marshal(sampleRequest("an old lighthouse"))
	require.NoError(t, err)
	_, err = db.Exec(`INSERT INTO jobs (uid, status, created_at, started_at, finished_at, params, prompt, model,
		total_s, load_s, denoise_s, its, device, dtype, peak_mem_bytes)
		VALUES ('old-1', 'done', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:01.000Z',
		?, 'an old lighthouse', 'tiny', 1, 0.5, 0.4, 10, 'cpu', 'float32', 0)`, string(params))
	require.NoError(t, err)
	require.NoError(t, db.Close())

	s, err := OpenStore(path)
	require.NoError(t, err)
	defer s.Close()
	old, err := s.GetJobByUID(ctx, "old-1")
	require.NoError(t, err)
	require.NotNil(t, old.Metrics)
	assert.Equal(t, "cpu", old.Metrics.Device)
	assert.Nil(t, old.Metrics.Versions, "an older job recorded no versions")
	assert.Nil(t, old.Metrics.Speed)

	id, err := s.CreateJob(ctx, "new-1", sampleRequest("a new lighthouse"))
	require.NoError(t, err)
	m := &protocol.Metrics{TotalS: 1, Device: "cpu", Dtype: "float32",
		Versions: map[string]string{"torch": "2.9.1"}, Speed: map[string]string{"sdpa": "auto"}}
	require.NoError(t, s.FinishJob(ctx, id, m, []protocol.ImageResult{{Path: "/img/n.png", Seed: 7, Width: 64, Height: 64}}))
	j, err := s.GetJob(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, m, j.Metrics)
}

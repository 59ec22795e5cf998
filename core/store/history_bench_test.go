package store

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/core/protocol"
	"atelier/core/request"
)

// Benchmarks of the history and the queue on generated histories of 10,000
// and 100,000 images. Each reports its figure against a baseline measured in
// the same run where one is meaningful: FTS5 search against a LIKE scan, one
// enqueue transaction against a transaction per job. Figures and the command
// are in docs/BENCHMARKS.md ("History and queue").

var benchWords = strings.Fields(`lighthouse castle forest river mountain portrait city street night dusk dawn
	fox owl wolf cat dog horse dragon knight wizard robot astronaut garden ocean wave storm cloud snow rain
	desert canyon temple ruins bridge tower market harbor ship train car bicycle lantern candle mirror window
	golden silver crimson azure emerald violet amber ivory ebony misty foggy sunny cinematic dramatic soft
	volumetric detailed intricate painterly watercolor oil charcoal sketch photo analog film grain bokeh macro
	wide aerial closeup symmetrical minimalist baroque gothic futuristic retro vintage cyberpunk steampunk
	ethereal serene moody vibrant muted pastel neon glowing shadowy reflective crystal marble wooden stone`)

// benchHistory writes n done jobs of one image each straight into the
// database (the images need not exist on disk for these queries), with
// prompts drawn from benchWords, a few models, sessions and starred images.
func benchHistory(b *testing.B, n int) *Store {
	b.Helper()
	s, err := OpenStore(filepath.Join(b.TempDir(), "history.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	ctx := context.Background()
	var sessions []int64
	for i := range 20 {
		id, err := s.NewSession(ctx, fmt.Sprintf("session %d", i), SessionUI)
		if err != nil {
			b.Fatal(err)
		}
		sessions = append(sessions, id)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	models := []string{"tiny", "/models/sdxl-base-1.0", "/models/juggernaut-xl", "/models/dreamshaper-xl"}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		b.Fatal(err)
	}
	jobStmt, err := tx.Prepare(`INSERT INTO jobs (uid, status, created_at, started_at, finished_at, params, prompt,
		negative_prompt, model, total_s, denoise_s, its, device, dtype, queued, session_id)
		VALUES (?, 'done', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'cuda', 'float16', 2, ?)`)
	if err != nil {
		b.Fatal(err)
	}
	imgStmt, err := tx.Prepare(`INSERT INTO images (job_id, path, seed, width, height, metadata, starred, created_at)
		VALUES (?, ?, ?, 1024, 1024, ?, ?, ?)`)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now().Add(-time.Duration(n) * time.Minute)
	for i := range n {
		words := make([]string, 6+rng.IntN(8))
		for k := range words {
			words[k] = benchWords[rng.IntN(len(benchWords))]
		}
		req := request.DefaultRequest()
		req.Prompt = strings.Join(words, " ")
		req.NegativePrompt = "blurry, lowres, " + benchWords[rng.IntN(len(benchWords))]
		req.Model = models[rng.IntN(len(models))]
		req.Seed = rng.Int64N(1 << 32)
		req.Steps = 30
		params, _ := json.Marshal(req)
		at := formatTime(start.Add(time.Duration(i) * time.Minute))
		res, err := jobStmt.Exec(fmt.Sprintf("bench-%07d", i), at, at, at, string(params), req.Prompt, req.NegativePrompt,
			req.Model, 9.5, 8.0, 3.75, sessions[rng.IntN(len(sessions))])
		if err != nil {
			b.Fatal(err)
		}
		jobID, _ := res.LastInsertId()
		if _, err := imgStmt.Exec(jobID, fmt.Sprintf("/images/%07d.png", i), req.Seed, string(params), i%25 == 0, at); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	if _, err := s.db.Exec(`ANALYZE`); err != nil {
		b.Fatal(err)
	}
	return s
}

var benchSizes = []int{10_000, 100_000}

// openGallery is what the gallery does when it opens: count the matches and
// fetch the first page.
func openGallery(b *testing.B, s *Store, q GalleryQuery) int {
	ctx := context.Background()
	n, err := s.CountImages(ctx, q)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.SearchImages(ctx, q, 0, 240); err != nil {
		b.Fatal(err)
	}
	return n
}

// perOp times f over iterations and returns the mean.
func perOp(iterations int, f func()) time.Duration {
	start := time.Now()
	for range iterations {
		f()
	}
	return time.Since(start) / time.Duration(iterations)
}

func BenchmarkHistory(b *testing.B) {
	for _, n := range benchSizes {
		s := benchHistory(b, n)
		b.Run(fmt.Sprintf("images=%d/gallery_first_page", n), func(b *testing.B) {
			for b.Loop() {
				openGallery(b, s, GalleryQuery{})
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/open")
		})
		// A two-word search, the last word a prefix, as typed in the gallery.
		q := GalleryQuery{Text: "lighthouse dus"}
		b.Run(fmt.Sprintf("images=%d/search", n), func(b *testing.B) {
			matches := 0
			for b.Loop() {
				matches = openGallery(b, s, q)
			}
			fts := b.Elapsed() / time.Duration(b.N)
			like := q
			like.likeScan = true
			like.Text = "lighthouse" // LIKE cannot do two words in any order; one word is its best case
			base := perOp(5, func() { openGallery(b, s, like) })
			b.ReportMetric(float64(fts.Microseconds())/1000, "ms/search")
			b.ReportMetric(float64(base.Microseconds())/1000, "ms/LIKE-scan")
			b.ReportMetric(float64(base)/float64(fts), "x-faster-than-LIKE")
			b.ReportMetric(float64(matches), "matches")
		})
		b.Run(fmt.Sprintf("images=%d/filters", n), func(b *testing.B) {
			seed := int64(12345)
			qs := []GalleryQuery{{Starred: true}, {Model: "/models/juggernaut-xl"}, {Seed: &seed},
				{From: time.Now().Add(-24 * time.Hour)}, {SessionID: 3}, {Text: "castle", Starred: true}}
			for b.Loop() {
				for _, q := range qs {
					openGallery(b, s, q)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*len(qs))/1000, "ms/query")
		})
	}
}

func BenchmarkEnqueue1000(b *testing.B) {
	s := benchHistory(b, 10_000)
	ctx := context.Background()
	reqs := make([]request.Request, 1000)
	for i := range reqs {
		reqs[i] = request.DefaultRequest()
		reqs[i].Prompt = fmt.Sprintf("queued job %d, a lighthouse at dusk", i)
		reqs[i].Seed = int64(i)
	}
	for b.Loop() {
		if _, err := s.Enqueue(ctx, 0, reqs); err != nil {
			b.Fatal(err)
		}
	}
	one := b.Elapsed() / time.Duration(b.N)
	// Baseline: each job in its own transaction, as a naive loop would write
	// them (each commit waits for the disk: synchronous=FULL). Timed over
	// 100 jobs and scaled to 1,000.
	base := perOp(1, func() {
		for i := range 100 {
			if _, err := s.Enqueue(ctx, 0, reqs[i:i+1]); err != nil {
				b.Fatal(err)
			}
		}
	}) * 10
	b.ReportMetric(float64(one.Microseconds())/1000, "ms/1000-jobs")
	b.ReportMetric(float64(base.Microseconds())/1000, "ms/1000-single-tx")
	b.ReportMetric(float64(base)/float64(one), "x-faster-than-single-tx")
}

func BenchmarkClaimNext(b *testing.B) {
	s := benchHistory(b, 10_000)
	ctx := context.Background()
	reqs := make([]request.Request, 5000)
	for i := range reqs {
		reqs[i] = request.DefaultRequest()
		reqs[i].Prompt = "queued"
	}
	if _, err := s.Enqueue(ctx, 0, reqs); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		j, err := s.ClaimNext(ctx)
		if err != nil || j == nil {
			b.Fatal("nothing to claim", err)
		}
		if err := s.FinishJob(ctx, j.ID, &protocol.Metrics{TotalS: 1}, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/claim+finish")
}

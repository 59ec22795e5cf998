package ui

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/test"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core/media"
	"atelier/core/paths"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
)

// procStatusKB reads a field of /proc/self/status (VmRSS, VmHWM) in kB.
func procStatusKB(field string) (float64, bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				v, err := strconv.ParseFloat(f[0], 64)
				return v, err == nil
			}
		}
	}
	return 0, false
}

// benchImages records n done jobs, each with a real 256×256 PNG on disk.
func benchImages(b *testing.B, store *store.Store, dir string, n int) {
	b.Helper()
	ctx := context.Background()
	// 64 distinct pictures, written under n names: real files to decode and
	// thumbnail, without spending the benchmark's setup on PNG encoding.
	var pics [][]byte
	for k := range 64 {
		img := image.NewNRGBA(image.Rect(0, 0, 256, 256))
		for y := range 256 {
			for x := range 256 {
				img.Set(x, y, color.NRGBA{R: uint8(x + k*4), G: uint8(y), B: uint8(k * 4), A: 255})
			}
		}
		var buf bytes.Buffer
		if err := png.Encode(&buf, img); err != nil {
			b.Fatal(err)
		}
		pics = append(pics, buf.Bytes())
	}
	words := []string{"lighthouse", "fox", "castle", "owl", "forest", "harbor", "dusk", "snow", "neon", "portrait"}
	const perJob = 8
	for i := 0; i < n; i += perJob {
		req := request.DefaultRequest()
		req.Prompt = fmt.Sprintf("a %s and a %s, study %d", words[i%len(words)], words[(i/7)%len(words)], i)
		req.Width, req.Height, req.Steps, req.BatchSize, req.Seed = 256, 256, 20, perJob, int64(i)
		id, err := store.CreateJob(ctx, fmt.Sprintf("bench-%06d", i), req)
		if err != nil {
			b.Fatal(err)
		}
		var imgs []protocol.ImageResult
		for k := 0; k < perJob && i+k < n; k++ {
			p := filepath.Join(dir, fmt.Sprintf("bench-%06d-%d.png", i, k))
			if err := os.WriteFile(p, pics[(i+k)%len(pics)], 0o644); err != nil {
				b.Fatal(err)
			}
			imgs = append(imgs, protocol.ImageResult{Path: p, Seed: int64(i + k), Width: 256, Height: 256})
		}
		if err := store.FinishJob(ctx, id, &protocol.Metrics{TotalS: 3, DenoiseS: 2.5, ItS: 8}, imgs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGallery10k opens the gallery on 10,000 images, waits for the first
// screen of thumbnails, then scrolls through the whole grid a screen at a
// time, and reports the process's resident memory with the gallery open
// (after the scroll) next to the same studio before the gallery opened. The
// test driver renders in software, so GPU textures are not counted; the
// widgets, the grid, the thumbnail cache and SQLite are.
//
//	go test -tags sqlite_fts5 ./ui -run '^$' -bench Gallery10k -benchtime 1x
func BenchmarkGallery10k(b *testing.B) {
	const n = 10_000
	home := b.TempDir()
	paths := paths.PathsUnder(home)
	if err := paths.EnsureDirs(); err != nil {
		b.Fatal(err)
	}
	store, err := store.OpenStore(paths.DB)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	benchImages(b, store, paths.Images, n)

	a := test.NewApp()
	defer a.Quit()
	w := a.NewWindow("bench")
	w.SetContent(widget.NewLabel(""))
	w.Resize(fyne.NewSize(1400, 900))
	uq := &uiQueue{}
	svc := &Services{Store: store, Paths: paths, Thumbs: media.NewThumbnailer(paths.Cache, galleryThumbPx)}
	s := testStudio{newStudioWith(a, w, &fakeGen{}, store, uq.post, svc), uq}
	defer s.x.gallery.thumbs.close()
	uq.drain()
	runtime.GC()
	debug.FreeOSMemory()
	before, _ := procStatusKB("VmRSS")

	for b.Loop() {
		start := time.Now()
		s.x.tabs.SelectIndex(tabGallery)
		uq.drain()
		g := s.x.gallery
		opened := time.Since(start)
		if g.count != n {
			b.Fatalf("the gallery shows %d images, want %d", g.count, n)
		}
		// The first screen's thumbnails (made on the first run, then cached).
		waitThumbs(b, s, g)
		firstScreen := time.Since(start)

		// Scroll to the end a screen at a time.
		step := w.Canvas().Size().Height * 0.9
		rows := float32(n) / float32(max(g.grid.ColumnCount(), 1))
		total := rows * (galleryTileSize + 4)
		screens := 0
		scrollStart := time.Now()
		for off := float32(0); off < total; off += step {
			g.grid.ScrollToOffset(off)
			uq.drain()
			screens++
		}
		perScreen := time.Since(scrollStart) / time.Duration(max(screens, 1))
		waitThumbs(b, s, g)

		runtime.GC()
		debug.FreeOSMemory()
		open, _ := procStatusKB("VmRSS")
		peak, _ := procStatusKB("VmHWM")
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(opened.Microseconds())/1000, "ms/open")
		b.ReportMetric(float64(firstScreen.Microseconds())/1000, "ms/first-screen")
		b.ReportMetric(float64(perScreen.Microseconds())/1000, "ms/scroll-screen")
		b.ReportMetric(open/1024, "MB-RSS-gallery-open")
		b.ReportMetric(before/1024, "MB-RSS-before")
		b.ReportMetric(peak/1024, "MB-RSS-peak")
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "MB-Go-heap")
		s.x.tabs.SelectIndex(tabStudio)
		uq.drain()
	}
}

// waitThumbs waits until every tile on screen has its thumbnail.
func waitThumbs(b *testing.B, s testStudio, g *galleryView) {
	b.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		s.q.drain()
		// The items on screen: rows from the scroll offset to the bottom.
		cols := max(g.grid.ColumnCount(), 1)
		rowH := float32(galleryTileSize) + theme.Padding()
		first := int(g.grid.GetScrollOffset()/rowH) * cols
		last := first + (int(s.win.Canvas().Size().Height/rowH)+2)*cols
		missing := 0
		for p, t := range g.tiles {
			if t.rec.Path == p && t.idx >= first && t.idx < last {
				if _, ok := g.thumbs.get(p); !ok {
					missing++
				}
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d thumbnails still missing after 5 minutes", missing)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

package ui

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/canvas"
	"fyne.io/fyne/v2/test"
	"fyne.io/fyne/v2/widget"
	"github.com/stretchr/testify/require"

	"atelier/core/download"
	"atelier/core/download/hubtest"
	"atelier/core/failure"
	"atelier/core/jobs"
	"atelier/core/library"
	"atelier/core/media"
	"atelier/core/paths"
	"atelier/core/request"
	"atelier/core/store"
)

// downloadStudio is a first-run studio (an empty library, no other apps'
// folders) whose "Get models…" panel downloads from endpoint with the real
// downloader; progress counts its progress events.
func downloadStudio(t *testing.T, endpoint string, progress *atomic.Int32) (testStudio, paths.Paths, *store.Store) {
	t.Helper()
	home := t.TempDir()
	old := otherAppsHome
	otherAppsHome = func() (string, error) { return home, nil }
	t.Cleanup(func() { otherAppsHome = old })
	p := paths.PathsUnder(t.TempDir())
	require.NoError(t, p.EnsureDirs())
	st, err := store.OpenStore(p.DB)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	python, workerDir := os.Getenv("ATELIER_PYTHON"), os.Getenv("ATELIER_WORKER_DIR")
	svc := &Services{Store: st, Paths: p, Thumbs: media.NewThumbnailer(p.Cache, galleryThumbPx),
		Download: func(ctx context.Context, what, dest string, onEvent func(download.Event)) (string, error) {
			return download.Run(ctx, download.Options{Python: python, WorkerDir: workerDir, What: what, Dest: dest,
				Env: hubtest.Env(t, endpoint), OnEvent: func(ev download.Event) {
					if ev.Event == "progress" {
						progress.Add(1)
					}
					onEvent(ev)
				}})
		}}
	a := test.NewTempApp(t)
	w := test.NewTempWindow(t, widget.NewLabel(""))
	w.Resize(fyne.NewSize(1400, 900))
	uq := &uiQueue{}
	gen := &fakeGen{run: func(context.Context, request.Request, func(event)) (*jobs.JobOutcome, error) {
		return nil, &failure.JobError{Code: failure.ErrInternal, Message: "no generator in this test"}
	}}
	s := newStudioWith(a, w, gen, st, uq.post, svc)
	t.Cleanup(s.x.gallery.thumbs.close)
	ts := testStudio{s, uq}
	t.Cleanup(func() { ts.settle(t) })
	return ts, p, st
}

// openPanel waits for the first-run panel to open by itself and to know its folder.
func openPanel(t *testing.T, s testStudio) *getModels {
	t.Helper()
	s.waitFor(t, time.Minute, "the first-run panel", func() bool {
		return s.getModels != nil && s.getModels.pop.Visible() && s.getModels.folder != ""
	})
	return s.getModels
}

func TestGetModelsPanelDownloadsSDXLBaseAndSelectsIt(t *testing.T) {
	url := hubtest.Start(t)
	var progress atomic.Int32
	s, p, st := downloadStudio(t, url, &progress)
	g := openPanel(t, s)
	// The folder Settings lists first, as the library scans it.
	require.Contains(t, g.into.Text, "Into "+p.Models+", Atelier's models folder: the library always scans it, and Settings lists it first.")
	require.True(t, g.checks[0].Checked, "SDXL base is offered first, ticked")
	require.False(t, g.checks[1].Checked)

	test.Tap(g.start)
	require.True(t, g.start.Disabled(), "Download waits while one runs")
	require.False(t, g.cancel.Disabled())
	s.waitFor(t, 5*time.Minute, "the download to end", func() bool { return g.done })
	require.False(t, g.prog.problem.Visible(), g.prog.problem.Text)
	require.Positive(t, progress.Load(), "the bar followed the downloader's progress")
	require.Equal(t, 1.0, g.prog.bar.Value)
	require.Equal(t, "Done: SDXL base 1.0 in the library.", g.prog.stage.Text)
	require.True(t, g.cancel.Disabled())

	// The model is in the Model field and, once the library is scanned again, among its choices.
	dest := filepath.Join(p.Models, "stable-diffusion-xl-base-1.0")
	require.Equal(t, dest, s.form.model.entry.Text)
	s.waitFor(t, time.Minute, "the library to list the model", func() bool {
		return s.form.lib != nil && slices.Contains(s.form.lib.Paths(library.KindCheckpoint), dest) &&
			slices.Contains(s.form.fields.choices[s.form.model.entry], dest)
	})
	require.Equal(t, p.Models, s.form.lib.Folders[0], "the library scans Atelier's folder first")
	folders, err := library.LibraryFolders(context.Background(), st)
	require.NoError(t, err)
	require.Empty(t, folders, "no folder of the user's was added: Atelier's own is always scanned")

	// Closing keeps it closed on the next start; "Get models…" opens it again.
	test.Tap(g.close)
	require.False(t, g.pop.Visible())
	require.True(t, s.app.Preferences().Bool(getModelsDismissedKey))
	test.Tap(s.form.model.getModels)
	require.True(t, g.pop.Visible())
}

func TestGetModelsPanelSaysWhatToDoOffline(t *testing.T) {
	var progress atomic.Int32
	s, _, _ := downloadStudio(t, "http://127.0.0.1:9", &progress)
	g := openPanel(t, s)
	test.Tap(g.start)
	s.waitFor(t, 5*time.Minute, "the download to fail", func() bool { return g.done })
	require.True(t, g.prog.problem.Visible())
	require.Contains(t, g.prog.problem.Text, "Cannot reach the Hugging Face hub (http://127.0.0.1:9)")
	require.Contains(t, g.prog.problem.Text, "add its folder to the library")
	require.False(t, g.start.Disabled(), "Download can be tried again")
	require.Equal(t, "tiny", s.form.model.entry.Text)
}

// labelLines are the lines a label draws, as its renderer laid them out.
func labelLines(o fyne.CanvasObject) []string {
	var lines []string
	var walk func(fyne.CanvasObject)
	walk = func(o fyne.CanvasObject) {
		switch v := o.(type) {
		case *canvas.Text:
			if strings.TrimSpace(v.Text) != "" {
				lines = append(lines, v.Text)
			}
		case fyne.Widget:
			for _, c := range test.WidgetRenderer(v).Objects() {
				walk(c)
			}
		case *fyne.Container:
			for _, c := range v.Objects {
				walk(c)
			}
		}
	}
	walk(o)
	return lines
}

func TestGetModelsPanelHintWrapsAtWords(t *testing.T) {
	var progress atomic.Int32
	s, p, _ := downloadStudio(t, "http://127.0.0.1:9", &progress)
	for _, size := range []fyne.Size{{Width: 1320, Height: 860}, {Width: 1024, Height: 700}} {
		s.win.Resize(size)
		g := openPanel(t, s)
		// Folders of every length up to a dozen letters more, so that some line
		// ends fall inside a word wherever the hint's words are.
		for n := 0; n <= 12; n++ {
			g.showFolder(filepath.Join(p.Data, strings.Repeat("m", n+1)))
			words := map[string]bool{}
			for _, w := range strings.Fields(g.into.Text) {
				words[w] = true
			}
			lines := labelLines(g.into)
			require.Greater(t, len(lines), 1, "at %v the hint fills more than a line: %q", size, g.into.Text)
			// The panel grows with the wrapped hint: its buttons stay inside it.
			panel := fyne.CurrentApp().Driver().AbsolutePositionForObject(g.pop.Content)
			btn := fyne.CurrentApp().Driver().AbsolutePositionForObject(g.start)
			require.LessOrEqual(t, btn.Y+g.start.Size().Height, panel.Y+g.pop.Content.Size().Height,
				"at %v the Download button overflows the panel", size)
			require.Equal(t, strings.Fields(g.into.Text), strings.Fields(strings.Join(lines, " ")), "the lines hold the hint, in order")
			for _, l := range lines {
				for _, w := range strings.Fields(l) {
					require.True(t, words[w], "at %v the line %q splits a word of the hint (%q)", size, l, w)
				}
			}
		}
	}
}

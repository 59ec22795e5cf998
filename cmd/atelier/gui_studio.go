//go:build !headless

package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"atelier/core/media"
	"atelier/core/paths"
	"atelier/core/setup"
	"atelier/core/store"
	"atelier/ui"
)

// runStudio opens the studio window with its queue and gallery: the queue
// runs in the background, one job at a time on the app's worker (or on the
// actors of the Ray cluster the settings name), until the window closes; a
// job still running then goes back to the queue.
func runStudio(a *app, stderr io.Writer) {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	q, out, rayNote, closeQueue := studioQueue(ctx, a, stderr)
	defer closeQueue()
	worker := heldWorker{a.bridge, a.runner}
	svc := &ui.Services{
		Store:  a.store,
		Queue:  q,
		Thumbs: media.NewThumbnailer(a.paths.Cache, ui.ThumbPixels),
		Paths:  a.paths,
		ExportImages: func(ctx context.Context, ids []int64, dir string) ([]string, error) {
			return store.ExportImages(ctx, a.store, ids, dir)
		},
		Download: downloader(a.paths, stderr),
		// The window's changes reach the app's worker and runner; the
		// environment still wins over them, as at start (applySettings).
		Settings: &ui.SettingsServices{Worker: worker, Output: out, Requirements: a.worker.requirements, RayNote: rayNote},
	}
	done := make(chan struct{})
	started := false
	start := func(s *ui.Studio) {
		started = true
		q.OnEvent = s.OnQueueEvent
		// The worker starts now, while the user writes a prompt, and each of
		// its start-up stages shows in the studio.
		a.starting.set(s.WorkerStarting)
		s.WarmUp(worker.Start)
		go func() {
			defer close(done)
			q.Run(ctx, false) //nolint:errcheck // ends with ctx at exit; job errors are shown per job
		}()
		s.StartRefresh(ctx.Done())
	}
	if a.worker.needsSetup() {
		// The queue starts with the studio: its jobs wait for the worker.
		ui.MainAfterSetup(a.worker.setupOptions(a.paths), a.runner, a.store, svc, func(s *ui.Studio) {
			fmt.Fprintln(stderr, "atelier: the worker is set up; the studio is open")
			start(s)
		})
	} else {
		ui.MainWith(a.runner, a.store, svc, start)
	}
	stop()
	if started {
		<-done
	}
}

// setupOptions are the window's set-up: the worker's requirements, from a
// local wheel folder when $ATELIER_FIND_LINKS names one.
func (p workerPlan) setupOptions(dirs paths.Paths) ui.SetupOptions {
	return ui.SetupOptions{Layout: setupLayout(dirs), Requirements: p.requirements, State: p.state,
		FindLinks: os.Getenv(setup.FindLinksEnv)}
}

//go:build !headless

package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"atelier/core/jobs"
	"atelier/core/media"
	"atelier/core/paths"
	"atelier/core/setup"
	"atelier/core/store"
	"atelier/ui"
)

// runStudio opens the studio window with its queue and gallery: the queue
// runs in the background, one job at a time on the app's worker, until the
// window closes; a job still running then goes back to the queue.
func runStudio(a *app, stderr io.Writer) {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	q := jobs.NewQueueRunner(a.runner)
	svc := &ui.Services{
		Store:  a.store,
		Queue:  q,
		Thumbs: media.NewThumbnailer(a.paths.Cache, ui.ThumbPixels),
		Paths:  a.paths,
		ExportImages: func(ctx context.Context, ids []int64, dir string) ([]string, error) {
			return store.ExportImages(ctx, a.store, ids, dir)
		},
		Download: downloader(a.paths, stderr),
	}
	done := make(chan struct{})
	started := false
	start := func(s *ui.Studio) {
		started = true
		q.OnEvent = s.OnQueueEvent
		// The worker starts now, while the user writes a prompt, and each of
		// its start-up stages shows in the studio.
		a.starting.set(s.WorkerStarting)
		s.WarmUp(func(ctx context.Context) error {
			// Another Atelier process holding the device runs this
			// window's jobs on its worker: none starts here.
			if held, _, err := a.runner.HoldsDevice(ctx); err == nil && !held {
				return nil
			}
			return a.bridge.Start(ctx)
		})
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

//go:build !headless

package main

import (
	"context"

	"atelier/core/jobs"
	"atelier/core/media"
	"atelier/core/store"
	"atelier/ui"
)

// runStudio opens the studio window with its queue and gallery: the queue
// runs in the background, one job at a time on the app's worker, until the
// window closes; a job still running then goes back to the queue.
func runStudio(a *app) {
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
	}
	done := make(chan struct{})
	ui.MainWith(a.runner, a.store, svc, func(s *ui.Studio) {
		q.OnEvent = s.OnQueueEvent
		go func() {
			defer close(done)
			q.Run(ctx, false) //nolint:errcheck // ends with ctx at exit; job errors are shown per job
		}()
		s.StartRefresh(ctx.Done())
	})
	stop()
	<-done
}

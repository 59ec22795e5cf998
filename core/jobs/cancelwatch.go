package jobs

import (
	"context"
	"sync"
	"time"
)

// watchCancel stops a running job from outside it: cancel gets stopCause when
// ctx ends (the queue or process stopping), and context.Canceled once
// requested, polled every poll, reports a cancel asked through the history
// (by this or another process). The returned stop ends the watch; it waits
// for the watcher to return, so nothing calls cancel after it.
func watchCancel(ctx context.Context, poll time.Duration, stopCause error, requested func() (bool, error), cancel context.CancelCauseFunc) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(poll)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				cancel(stopCause)
				return
			case <-t.C:
				if yes, err := requested(); err == nil && yes {
					cancel(context.Canceled)
				}
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		wg.Wait()
	}
}

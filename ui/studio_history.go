package ui

import (
	"context"
	"time"

	"atelier/core/store"
)

// History lists the newest images. store.Store implements it.
type History interface {
	RecentImages(ctx context.Context, limit int) ([]store.ImageRecord, error)
}

// refreshHistory reloads the strip in the background and then loads any
// thumbnails it lacks, one at a time, so the UI never waits on the disk.
func (s *Studio) refreshHistory() {
	// A finished job may have measured a new speed, or shown the device.
	s.updateCPUNote()
	if s.hist == nil {
		return
	}
	s.galleryChanged()
	s.historySeq++
	seq, hist := s.historySeq, s.hist
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		recs, err := hist.RecentImages(ctx, stripLimit)
		s.do(func() {
			if seq != s.historySeq {
				return
			}
			s.historyDone = seq
			if err != nil {
				s.status.set(statusError, "Could not read the history: "+err.Error(), "")
				return
			}
			if s.selectAfter != "" {
				s.strip.selected = s.selectAfter
				s.selectAfter = ""
			}
			missing := s.strip.set(recs)
			follow := s.followNewest
			s.followNewest = false
			// Reopen on the newest image rather than a blank canvas, and follow
			// the queue's results; a running Generate job shows its own.
			if (s.view.shown == nil || follow) && len(recs) > 0 && s.job == nil {
				s.showRecord(recs[0])
			}
			if len(missing) > 0 {
				go s.loadThumbs(missing)
			}
		})
	}()
}

// loadThumbs decodes thumbnails one at a time off the UI goroutine.
func (s *Studio) loadThumbs(paths []string) {
	for _, p := range paths {
		s.thumbs.load(p)
		s.do(func() { s.strip.thumbReady(p) })
	}
}

// showRecord shows an image from the history in the viewer.
func (s *Studio) showRecord(rec store.ImageRecord) {
	s.view.showRecord(rec, "")
	s.strip.selectPath(rec.Path)
}

// galleryChanged tells the gallery that the history has new images: it
// shows them at once if it is on screen, else when it is opened next.
func (s *Studio) galleryChanged() {
	if s.x == nil || s.x.gallery == nil || s.x.tabs == nil {
		return
	}
	g := s.x.gallery
	g.stale = true
	if s.x.tabs.SelectedIndex() == tabGallery && g.opened && !g.detail.box.Visible() {
		g.stale = false
		g.reload()
	}
}

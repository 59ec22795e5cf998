package ui

import (
	"fyne.io/fyne/v2"
)

// What only the tests ask of the studio: the app never needs it.

// newStudio is a studio without the queue and gallery tabs.
func newStudio(a fyne.App, w fyne.Window, gen generator, hist History, post func(func())) *Studio {
	return newStudioWith(a, w, gen, hist, post, nil)
}

// historyLoaded reports whether the newest history refresh is on screen.
func (s *Studio) historyLoaded() bool { return s.historyDone == s.historySeq }

// fieldError is the error text shown beside a field, or "".
func (f *form) fieldError(field string) string {
	if l, ok := f.fields.errs[field]; ok && l.Visible() {
		return l.Text
	}
	return ""
}

// len is the number of images the strip shows.
func (s *recentStrip) len() int { return len(s.items) }

// snapshot returns the job's current state without taking the preview.
func (j *jobRun) snapshot() (progressSnapshot, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.snap, j.preview != nil
}

// close stops the loader's workers and waits for the thumbnails in progress,
// so that a test's temporary folders can go.
func (l *thumbLoader) close() {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		l.queue = nil
		close(l.wake)
	}
	l.mu.Unlock()
	l.working.Wait()
}

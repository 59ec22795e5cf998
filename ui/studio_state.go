package ui

import (
	"context"
	"encoding/json"
	"sync"

	"atelier/core/request"

	"fyne.io/fyne/v2"
)

// stateStore keeps what the studio remembers between runs: the window
// layout and the last request.
type stateStore interface {
	GetSetting(ctx context.Context, key string) (string, bool, error)
	SetSetting(ctx context.Context, key, value string) error
	LastRequest(ctx context.Context) (request.Request, bool, error)
	SetLastRequest(ctx context.Context, r request.Request) error
}

func (s *Studio) state() stateStore { return s.x.svc.Store }

func (s *Studio) saveLastRequest(r request.Request) {
	if s.x == nil {
		return
	}
	r.PreviewEvery = 0
	_ = s.state().SetLastRequest(context.Background(), r) // best effort: the preferences keep a copy too
}

// saveForm remembers what the form holds as it is, invalid or half-typed:
// a relaunch shows what was there, not what last ran. A field that does not
// parse keeps its default.
func (s *Studio) saveForm() {
	r, _ := s.form.request()
	s.saveLastRequest(r)
}

// formChanged follows each edit of the form: the form is written in the
// background, so that an app that is killed, not closed, keeps it too.
func (s *Studio) formChanged() {
	if s.x == nil || s.x.formSaver == nil {
		return
	}
	r, _ := s.form.request()
	s.x.formSaver.put(r)
}

// formSaver writes the form off the UI goroutine. Edits that come while a
// write runs fold into the next write, so a burst of typing costs a write or
// two, and the newest form is always the last one written.
type formSaver struct {
	save func(request.Request)
	wake chan struct{} // one slot: a pending write, however many edits asked for it
	done chan struct{}

	mu     sync.Mutex
	next   *request.Request
	busy   bool
	closed bool
}

func newFormSaver(save func(request.Request)) *formSaver {
	fs := &formSaver{save: save, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go fs.run()
	return fs
}

// put asks for r to be written; it never blocks.
func (fs *formSaver) put(r request.Request) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.closed {
		return
	}
	fs.next = &r
	select {
	case fs.wake <- struct{}{}:
	default: // a write is already asked for; it will take the newest form
	}
}

func (fs *formSaver) run() {
	defer close(fs.done)
	for range fs.wake {
		fs.mu.Lock()
		r := fs.next
		fs.next = nil
		fs.busy = r != nil
		fs.mu.Unlock()
		if r != nil {
			fs.save(*r)
		}
		fs.mu.Lock()
		fs.busy = false
		fs.mu.Unlock()
	}
}

// idle reports whether no write is pending or running.
func (fs *formSaver) idle() bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.next == nil && !fs.busy
}

// stop writes what is pending and ends the goroutine; later puts are dropped.
func (fs *formSaver) stop() {
	fs.mu.Lock()
	if fs.closed {
		fs.mu.Unlock()
		return
	}
	fs.closed = true
	close(fs.wake)
	fs.mu.Unlock()
	<-fs.done
}

// startFormSaver begins saving the form on each edit, after the remembered
// form is restored (restoring it is no edit to save).
func (s *Studio) startFormSaver() {
	s.form.fields.onChange = func() {
		s.formChanged()
		s.updateCPUNote()
	}
	if s.x == nil {
		return
	}
	s.x.formSaver = newFormSaver(s.saveLastRequest)
}

// windowLayout is the window's size, split and tab, remembered between runs.
type windowLayout struct {
	Width  float32 `json:"width"`
	Height float32 `json:"height"`
	Split  float64 `json:"split"`
	Tab    int     `json:"tab"`
}

const settingWindowLayout = "ui.window_layout"

// restoreState applies the remembered window layout and form settings.
func (s *Studio) restoreState() {
	if s.x == nil {
		return
	}
	ctx := context.Background()
	st := s.state()
	if r, ok, err := st.LastRequest(ctx); err == nil && ok && r.Model != "" {
		s.form.set(r)
	}
	v, ok, err := st.GetSetting(ctx, settingWindowLayout)
	if err != nil || !ok {
		return
	}
	var l windowLayout
	if json.Unmarshal([]byte(v), &l) != nil {
		return
	}
	if l.Width >= 400 && l.Height >= 300 {
		s.win.Resize(fyne.NewSize(l.Width, l.Height))
	}
	if l.Split > 0.05 && l.Split < 0.95 && s.x.split != nil {
		s.x.split.SetOffset(l.Split)
	}
	if l.Tab >= 0 && l.Tab < len(s.x.tabs.Items) {
		s.x.tabs.SelectIndex(l.Tab)
	}
}

// saveState remembers the window layout and the form (at close).
func (s *Studio) saveState() {
	if s.x == nil {
		return
	}
	if s.x.formSaver != nil {
		s.x.formSaver.stop() // its last write must not land after this one
	}
	size := s.win.Canvas().Size()
	l := windowLayout{Width: size.Width, Height: size.Height, Tab: s.x.tabs.SelectedIndex()}
	if s.x.split != nil {
		l.Split = s.x.split.Offset
	}
	if b, err := json.Marshal(l); err == nil {
		_ = s.state().SetSetting(context.Background(), settingWindowLayout, string(b)) // best effort at exit
	}
	s.saveForm()
}

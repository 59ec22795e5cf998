package ui

import (
	"context"
	"encoding/json"

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
	size := s.win.Canvas().Size()
	l := windowLayout{Width: size.Width, Height: size.Height, Tab: s.x.tabs.SelectedIndex()}
	if s.x.split != nil {
		l.Split = s.x.split.Offset
	}
	if b, err := json.Marshal(l); err == nil {
		_ = s.state().SetSetting(context.Background(), settingWindowLayout, string(b)) // best effort at exit
	}
	if r, verr := s.form.request(); verr == nil {
		s.saveLastRequest(r)
	}
}

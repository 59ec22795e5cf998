package ui

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/core/setup"
	"atelier/core/setup/wheeltest"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/test"
	"fyne.io/fyne/v2/widget"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type setupHarness struct {
	w      fyne.Window
	q      *uiQueue
	sc     *setupScreen
	studio *widget.Label // what "the studio" is in these tests
	result chan error
}

func newSetupHarness(t *testing.T, opt SetupOptions) *setupHarness {
	t.Helper()
	test.NewTempApp(t)
	h := &setupHarness{q: &uiQueue{}, studio: widget.NewLabel("the studio"), result: make(chan error, 4)}
	h.w = test.NewTempWindow(t, widget.NewLabel(""))
	h.w.Resize(fyne.NewSize(900, 700))
	h.sc = showSetup(h.w, opt, h.q.post, func() { h.w.SetContent(h.studio) })
	h.sc.finished = func(err error) { h.result <- err }
	return h
}

// attempt taps Start and waits for the set-up to end. The deadline is a
// generous bound that only catches a hang: a venv takes seconds to make.
func (h *setupHarness) attempt(t *testing.T) error {
	t.Helper()
	test.Tap(h.sc.start)
	deadline := time.Now().Add(5 * time.Minute)
	for {
		h.q.drain()
		select {
		case err := <-h.result:
			return err
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("set-up did not end (stage %q)", h.sc.prog.stage.Text)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// tinySetup is a set-up of a stand-in requirements file with one tiny wheel
// from a local folder: a real venv and pip, in seconds and with no network.
func tinySetup(t *testing.T) SetupOptions {
	t.Helper()
	wheels := t.TempDir()
	req, err := wheeltest.Write(wheels)
	require.NoError(t, err)
	l := setup.Layout{Data: t.TempDir()}
	st, err := setup.Inspect(l, req)
	require.NoError(t, err)
	return SetupOptions{Layout: l, Requirements: req, State: st, FindLinks: wheels}
}

func hostPython(t *testing.T) {
	t.Helper()
	if _, err := setup.FindPython(context.Background(), ""); err != nil {
		t.Skipf("no Python 3.10–3.12 with venv here: %v", err)
	}
}

func TestSetupScreenWithoutPythonSaysWhatToDoAndStays(t *testing.T) {
	opt := tinySetup(t)
	h := newSetupHarness(t, opt)
	missing := filepath.Join(t.TempDir(), "python3.11")
	test.Type(h.sc.other, missing)

	err := h.attempt(t)
	require.Error(t, err)
	assert.Contains(t, h.sc.prog.problem.Text, missing+" does not exist")
	assert.True(t, strings.HasPrefix(h.sc.prog.todo.Text, "What to do: "), h.sc.prog.todo.Text)
	assert.Equal(t, h.sc.content, h.w.Content(), "the set-up screen stays, so the user can fix it")
	assert.False(t, h.sc.start.Disabled(), "the user can try again")
	assert.Equal(t, "Try again", h.sc.start.Text)
	assert.NoDirExists(t, opt.State.Venv)
}

func TestSetupScreenWithoutNetworkSaysSo(t *testing.T) {
	hostPython(t)
	opt := tinySetup(t)
	opt.FindLinks = ""
	// Nothing listens on port 1 of the loopback: pip is refused as without
	// network; one retry, so pip names the refusal.
	opt.IndexURL = "http://127.0.0.1:1/simple"
	t.Setenv("PIP_RETRIES", "1")
	h := newSetupHarness(t, opt)

	require.Error(t, h.attempt(t))
	assert.Contains(t, h.sc.prog.problem.Text, "no network")
	assert.Contains(t, h.sc.prog.todo.Text, "--find-links")
	assert.Equal(t, h.sc.content, h.w.Content())
	assert.False(t, h.sc.start.Disabled())
}

func TestSetupScreenBuildsTheVenvThenOpensTheStudio(t *testing.T) {
	hostPython(t)
	opt := tinySetup(t)
	h := newSetupHarness(t, opt)
	deadline := time.Now().Add(2 * time.Minute)
	for strings.HasPrefix(h.sc.python.Text, "Looking") {
		require.False(t, time.Now().After(deadline), "the Python probe did not end")
		h.q.drain()
		time.Sleep(10 * time.Millisecond)
	}
	assert.Regexp(t, `\(Python 3\.1[0-2]\.\d+\)$`, h.sc.python.Text, "the screen names the Python it found")
	shown := strings.Join(labelTexts(h.sc.content), "\n")
	assert.Contains(t, shown, opt.State.Venv, "the screen says where the venv goes")
	assert.Contains(t, shown, "nothing: from the folder "+opt.FindLinks, "and what it downloads")

	require.NoError(t, h.attempt(t))
	assert.Equal(t, 1.0, h.sc.prog.bar.Value)
	assert.Equal(t, fyne.CanvasObject(h.studio), h.w.Content(), "the studio replaces the set-up screen")
	st, err := setup.Inspect(opt.Layout, opt.Requirements)
	require.NoError(t, err)
	require.True(t, st.Ready)
	out, err := exec.Command(st.Python, "-c", "import "+wheeltest.Package).CombinedOutput()
	assert.NoError(t, err, "%s", out)
}

// labelTexts is the text of every label under o.
func labelTexts(o fyne.CanvasObject) []string {
	var out []string
	switch v := o.(type) {
	case *widget.Label:
		out = append(out, v.Text)
	case *fyne.Container:
		for _, c := range v.Objects {
			out = append(out, labelTexts(c)...)
		}
	case *widget.Form:
		for _, it := range v.Items {
			out = append(out, labelTexts(it.Widget)...)
		}
	case *container.Scroll:
		out = append(out, labelTexts(v.Content)...)
	}
	return out
}

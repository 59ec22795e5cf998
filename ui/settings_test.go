package ui

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/test"
	"fyne.io/fyne/v2/widget"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/jobs"
	"atelier/core/library"
	"atelier/core/media"
	"atelier/core/paths"
	"atelier/core/protocol"
	"atelier/core/settings"
	"atelier/core/store"
)

// machineWorker stands in for a worker on a machine this test does not run on
// (two GPUs, or none): the window's device list and its checks come from the
// hello. It records what the window asks of the worker.
type machineWorker struct {
	hello protocol.Hello
	mu    sync.Mutex
	env   []string
	py    string
	calls int
	busy  bool // a job is in flight: a restart waits for it
}

func (w *machineWorker) Hello() (protocol.Hello, bool) { return w.hello, true }

func (w *machineWorker) Reconfigure(python string, env []string) (bool, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls++
	if python == w.py && slices.Equal(env, w.env) {
		return false, false
	}
	w.py, w.env = python, slices.Clone(env)
	return true, w.busy
}

func (w *machineWorker) Start(context.Context) error { return nil }

func (w *machineWorker) lastEnv() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.env)
}

func twoGPUs() protocol.Hello {
	return protocol.Hello{Device: "cuda", Devices: []protocol.Device{
		{Name: "NVIDIA H100 80GB HBM3", Kind: "cuda", MemoryBytes: 80 << 30},
		{Name: "NVIDIA H100 80GB HBM3", Kind: "cuda", MemoryBytes: 80 << 30},
		{Name: "Test CPU", Kind: "cpu", MemoryBytes: 64 << 30}}}
}

// settingsStudio is a studio with the queue, gallery and Settings over a real
// store and runner; worker is the bridge (or a stand-in for another machine).
func settingsStudio(t *testing.T, worker WorkerControl, gen generator, runner *jobs.Runner, st *store.Store, dirs paths.Paths, env map[string]string) (testStudio, *SettingsServices) {
	t.Helper()
	chosen := filepath.Join(t.TempDir(), "chosen")
	require.NoError(t, os.MkdirAll(chosen, 0o755))
	sv := &SettingsServices{Worker: worker, Output: runner,
		Requirements: filepath.Join("..", "python", "requirements.txt"),
		Lookup:       func(k string) (string, bool) { v, ok := env[k]; return v, ok }}
	svc := &Services{Store: st, Paths: dirs, Thumbs: media.NewThumbnailer(dirs.Cache, galleryThumbPx),
		ChooseFolder: func(string) (string, error) { return chosen, nil }, Settings: sv}
	a := test.NewTempApp(t)
	w := test.NewTempWindow(t, widget.NewLabel(""))
	w.Resize(fyne.NewSize(1400, 900))
	uq := &uiQueue{}
	if gen == nil {
		gen = eventsOf(runner)
	}
	s := newStudioWith(a, w, gen, st, uq.post, svc)
	t.Cleanup(s.x.gallery.thumbs.close)
	ts := testStudio{s, uq}
	t.Cleanup(func() {
		if sw := s.settingsWin; sw != nil {
			ts.waitFor(t, time.Minute, "the settings window's work", func() bool { return !sw.busy })
		}
		ts.settle(t)
	})
	return ts, sv
}

func newSettingsStore(t *testing.T) (*store.Store, paths.Paths) {
	t.Helper()
	dirs := paths.PathsUnder(t.TempDir())
	require.NoError(t, dirs.EnsureDirs())
	st, err := store.OpenStore(dirs.DB)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st, dirs
}

// openedSettings opens the window with Ctrl+, and waits for the stored
// settings and the folders to show.
func openedSettings(t *testing.T, s testStudio) *settingsWindow {
	t.Helper()
	settingsItem(t, s).Action() // what the driver runs on Ctrl+, or a click
	sw := s.settingsWin
	require.NotNil(t, sw, "Ctrl+, opens the Settings window")
	s.waitFor(t, 20*time.Second, "the stored settings", func() bool {
		return sw.speed.Selected != "" && len(sw.folders.Objects) > 0
	})
	return sw
}

func saveAndWait(t *testing.T, s testStudio, sw *settingsWindow) {
	t.Helper()
	test.Tap(sw.save)
	s.waitFor(t, 2*time.Minute, "the save", func() bool { return !sw.busy })
}

func stored(t *testing.T, st *store.Store) settings.Settings {
	t.Helper()
	got, err := settings.Load(context.Background(), st)
	require.NoError(t, err)
	return got
}

// settingsItem is the menu's Settings… entry.
func settingsItem(t *testing.T, s testStudio) *fyne.MenuItem {
	t.Helper()
	menu := s.win.MainMenu()
	require.NotNil(t, menu, "the window has a menu")
	var item *fyne.MenuItem
	for _, m := range menu.Items {
		for _, it := range m.Items {
			if strings.HasPrefix(it.Label, "Settings") {
				item = it
			}
		}
	}
	require.NotNil(t, item, "a Settings… entry in the menu")
	return item
}

func TestSettingsMenuEntryAndShortcut(t *testing.T) {
	st, dirs := newSettingsStore(t)
	s, _ := settingsStudio(t, &machineWorker{hello: twoGPUs()}, nil, jobs.NewRunner(st, nil, dirs), st, dirs, nil)
	item := settingsItem(t, s)
	require.NotNil(t, item.Shortcut)
	assert.Equal(t, "CustomDesktop:Control+,", item.Shortcut.ShortcutName(), "the entry runs on Ctrl+,")
	item.Action()
	require.NotNil(t, s.settingsWin)
	first := s.settingsWin
	item.Action()
	assert.Same(t, first, s.settingsWin, "a second Ctrl+, brings the open window forward, no second one")
}

func TestSettingsWindowMarkup(t *testing.T) {
	st, dirs := newSettingsStore(t)
	s, _ := settingsStudio(t, &machineWorker{hello: twoGPUs()}, nil, jobs.NewRunner(st, nil, dirs), st, dirs, nil)
	s.app.Settings().SetTheme(newStudioTheme())
	// A models folder of no machine in particular, as the markup must name none.
	s.x.svc.Paths.Models = "/srv/atelier/models"
	sw := openedSettings(t, s)
	sw.win.Resize(fyne.NewSize(640, 700))
	s.q.drain()
	c := sw.win.Canvas()
	got := test.RenderToMarkup(c)
	for _, dir := range []string{os.TempDir(), t.TempDir(), dirs.Data} {
		assert.NotContains(t, got, dir, "the markup names a folder of this machine")
	}
	if home, err := os.UserHomeDir(); err == nil && home != "/" {
		assert.NotContains(t, got, home, "the markup names a folder of this machine")
	}
	if *updateMarkup {
		require.NoError(t, os.WriteFile(filepath.Join("testdata", "settings_window.xml"), []byte(got), 0o644))
	}
	test.AssertRendersToMarkup(t, "settings_window.xml", c)
}

func TestSettingsDevicesAreTheWorkersOwn(t *testing.T) {
	st, dirs := newSettingsStore(t)
	s, _ := settingsStudio(t, &machineWorker{hello: twoGPUs()}, nil, jobs.NewRunner(st, nil, dirs), st, dirs, nil)
	sw := openedSettings(t, s)
	assert.Equal(t, []string{"Auto: the best the worker finds", "cuda:0 · NVIDIA H100 80GB HBM3",
		"cuda:1 · NVIDIA H100 80GB HBM3", "cpu · Test CPU"}, sw.device.Options)
	assert.Equal(t, 0, sw.device.SelectedIndex(), "auto by default")
	sw.device.SetSelectedIndex(2)
	saveAndWait(t, s, sw)
	assert.Equal(t, "cuda:1", stored(t, st).Device)
}

func TestSettingsSpeedModeIsStoredAndTheWorkerRestarts(t *testing.T) {
	st, dirs := newSettingsStore(t)
	worker := &machineWorker{hello: twoGPUs()}
	s, _ := settingsStudio(t, worker, nil, jobs.NewRunner(st, nil, dirs), st, dirs,
		map[string]string{"ATELIER_VAE_SLICING": "0"})
	sw := openedSettings(t, s)
	assert.Equal(t, "Balanced", sw.speed.Selected)
	assert.Contains(t, sw.envNote.Text, "ATELIER_VAE_SLICING=0", "the window says which variables of the environment win")

	sw.speed.SetSelected("Low VRAM")
	assert.Contains(t, sw.speedHint.Text, "little memory")
	saveAndWait(t, s, sw)
	assert.Equal(t, settings.SpeedLowVRAM, stored(t, st).Speed)
	env := worker.lastEnv()
	assert.Contains(t, env, "ATELIER_OFFLOAD=model", "the mode's variables reach the worker")
	assert.Contains(t, env, "ATELIER_VAE_TILING=1")
	for _, kv := range env {
		assert.False(t, strings.HasPrefix(kv, "ATELIER_VAE_SLICING="), "the environment's value wins: %s", kv)
	}
	assert.Equal(t, savedRestartNow, sw.status.Text, "no job runs: the worker restarts at once")

	// With a job in flight the worker restarts after it.
	worker.mu.Lock()
	worker.busy = true
	worker.mu.Unlock()
	sw.speed.SetSelected("Fast")
	saveAndWait(t, s, sw)
	assert.Equal(t, settings.SpeedFast, stored(t, st).Speed)
	assert.Equal(t, savedRestartLater, sw.status.Text)
	assert.Contains(t, workerRestartNote, "takes effect after the current job"[len("takes "):])

	// Saving again with nothing changed restarts nothing.
	saveAndWait(t, s, sw)
	assert.Equal(t, savedText, sw.status.Text)

	// A new window shows what is stored.
	sw.Close()
	sw = openedSettings(t, s)
	assert.Equal(t, "Fast", sw.speed.Selected)
}

func TestSettingsRefuseWhatCannotWork(t *testing.T) {
	st, dirs := newSettingsStore(t)
	cpuOnly := protocol.Hello{Device: "cpu", Devices: []protocol.Device{{Name: "Test CPU", Kind: "cpu"}}}
	worker := &machineWorker{hello: cpuOnly}
	// Settings saved on another machine, with a GPU this worker lacks.
	require.NoError(t, settings.Save(context.Background(), st, settings.Settings{Device: "cuda:1"}))
	s, _ := settingsStudio(t, worker, nil, jobs.NewRunner(st, nil, dirs), st, dirs, nil)
	sw := openedSettings(t, s)
	assert.Equal(t, "cuda:1 (the worker has none)", sw.device.Selected, "the stored device stays shown, marked")

	sw.speed.SetSelected("Fast")
	saveAndWait(t, s, sw)
	assert.True(t, sw.errs["device"].Visible())
	assert.Contains(t, sw.errs["device"].Text, "the worker has no cuda device (it found cpu (Test CPU))")
	assert.Contains(t, sw.status.Text, "nothing was saved")
	assert.Equal(t, settings.Settings{Device: "cuda:1"}, stored(t, st), "nothing was stored")
	assert.Zero(t, worker.calls, "the worker was not touched")
	sw.device.SetSelectedIndex(0)
	assert.False(t, sw.errs["device"].Visible(), "choosing another device clears the mark")

	dir := t.TempDir()
	sw.output.SetText(filepath.Join(dir, "missing"))
	saveAndWait(t, s, sw)
	assert.Contains(t, sw.errs["output_folder"].Text, "does not exist: create it first, or choose another")
	sw.output.SetText("")

	old := filepath.Join(dir, "python3.9")
	require.NoError(t, os.WriteFile(old, []byte("#!/bin/sh\necho 3.9.18\n"), 0o755))
	for _, c := range []struct{ path, says string }{
		{old, "is Python 3.9.18, not 3.10–3.12"},
		{filepath.Join(dir, "nope", "python"), "does not exist"},
		{"python3", "is not an absolute path"},
	} {
		sw.python.SetText(c.path)
		saveAndWait(t, s, sw)
		assert.True(t, sw.errs["python"].Visible(), c.path)
		assert.Contains(t, sw.errs["python"].Text, c.says)
		assert.Equal(t, settings.Settings{Device: "cuda:1"}, stored(t, st), "nothing was stored")
	}
	test.Tap(sw.pythonCheck)
	s.waitFor(t, time.Minute, "the check", func() bool { return !sw.busy })
	assert.Contains(t, sw.errs["python"].Text, "is not an absolute path", "Check says the same without saving")
}

func TestSettingsWorkerPythonIsChecked(t *testing.T) {
	py := os.Getenv("ATELIER_PYTHON")
	if py == "" {
		t.Skip("needs ATELIER_PYTHON, the worker's venv (make test sets it)")
	}
	st, dirs := newSettingsStore(t)
	worker := &machineWorker{hello: twoGPUs()}
	s, _ := settingsStudio(t, worker, nil, jobs.NewRunner(st, nil, dirs), st, dirs, nil)
	sw := openedSettings(t, s)
	sw.python.SetText(py)
	test.Tap(sw.pythonCheck)
	s.waitFor(t, time.Minute, "the check", func() bool { return !sw.busy })
	assert.Regexp(t, `^Python 3\.1[0-2]\.\d+ with the worker's libraries\.`, sw.pythonInfo.Text)
	saveAndWait(t, s, sw)
	assert.Equal(t, py, stored(t, st).Python)
	worker.mu.Lock()
	assert.Equal(t, py, worker.py, "the next worker runs on it")
	worker.mu.Unlock()
}

func TestSettingsOutputFolderAppliesAtOnce(t *testing.T) {
	st, dirs := newSettingsStore(t)
	worker := &machineWorker{hello: twoGPUs()}
	runner := jobs.NewRunner(st, nil, dirs)
	s, _ := settingsStudio(t, worker, nil, runner, st, dirs, nil)
	sw := openedSettings(t, s)
	assert.Equal(t, dirs.Images, runner.ImagesFolder())
	test.Tap(sw.outputChoose)
	s.waitFor(t, 10*time.Second, "the chosen folder", func() bool { return sw.output.Text != "" })
	chosen := sw.output.Text
	saveAndWait(t, s, sw)
	assert.Equal(t, chosen, stored(t, st).OutputFolder)
	assert.Equal(t, chosen, runner.ImagesFolder(), "the next job writes there")
	assert.Equal(t, savedText, sw.status.Text, "no worker restart for the output folder")
}

func TestSettingsModelFoldersRescanTheLibrary(t *testing.T) {
	st, dirs := newSettingsStore(t)
	s, _ := settingsStudio(t, &machineWorker{hello: twoGPUs()}, nil, jobs.NewRunner(st, nil, dirs), st, dirs, nil)
	sw := openedSettings(t, s)
	// Atelier's own models folder comes first, always, and cannot be removed:
	// the first-run panel downloads into it.
	own := func() {
		t.Helper()
		require.NotEmpty(t, sw.folders.Objects)
		assert.Contains(t, rowText(sw.folders.Objects[0]), displayFolder(dirs.Models))
		assert.Contains(t, rowText(sw.folders.Objects[0]), "Atelier's models folder: always scanned, and downloads go here.")
		assert.Nil(t, findTipButton(sw.folders.Objects[0]), "no remove button for Atelier's own folder")
	}
	own()
	assert.Contains(t, rowText(sw.folders.Objects[1]), "No folders of your own yet")
	test.Tap(sw.addFolder)
	var added string
	s.waitFor(t, 20*time.Second, "the folder in the library", func() bool {
		f, _ := library.LibraryFolders(context.Background(), st)
		if len(f) == 1 {
			added = f[0]
		}
		return added != "" && s.form.lib != nil && slices.Contains(s.form.lib.Folders, added) &&
			len(sw.folders.Objects) == 2 && strings.Contains(rowText(sw.folders.Objects[1]), "chosen")
	})
	own()
	assert.Equal(t, []string{dirs.Models, added}, s.form.lib.Folders, "the library scans both, its own first")
	// Its row's button removes it, and the studio's lists rescan.
	remove := findTipButton(sw.folders.Objects[1])
	require.NotNil(t, remove)
	test.Tap(remove)
	s.waitFor(t, 20*time.Second, "the folder gone", func() bool {
		f, _ := library.LibraryFolders(context.Background(), st)
		return len(f) == 0 && s.form.lib != nil && !slices.Contains(s.form.lib.Folders, added) &&
			len(sw.folders.Objects) == 2 && strings.Contains(rowText(sw.folders.Objects[1]), "No folders of your own yet")
	})
	own()
	assert.Equal(t, []string{dirs.Models}, s.form.lib.Folders, "its own folder is still scanned")
}

func rowText(o fyne.CanvasObject) string {
	var out []string
	walk(o, func(o fyne.CanvasObject) {
		if l, ok := o.(*widget.Label); ok {
			out = append(out, l.Text)
		}
	})
	return strings.Join(out, " ")
}

func findTipButton(o fyne.CanvasObject) *tipButton {
	var b *tipButton
	walk(o, func(o fyne.CanvasObject) {
		if t, ok := o.(*tipButton); ok {
			b = t
		}
	})
	return b
}

func walk(o fyne.CanvasObject, f func(fyne.CanvasObject)) {
	f(o)
	if c, ok := o.(*fyne.Container); ok {
		for _, child := range c.Objects {
			walk(child, f)
		}
	}
}

func TestSettingsEscClosesTheWindow(t *testing.T) {
	st, dirs := newSettingsStore(t)
	s, _ := settingsStudio(t, &machineWorker{hello: twoGPUs()}, nil, jobs.NewRunner(st, nil, dirs), st, dirs, nil)
	sw := openedSettings(t, s)
	c := sw.win.Canvas()
	c.Focus(sw.ray)
	test.Type(sw.ray, "head:6379")
	pressKey(c, fyne.KeyEscape, false)
	assert.False(t, sw.closed, "the first Esc leaves the field")
	assert.Nil(t, c.Focused())
	pressKey(c, fyne.KeyEscape, false)
	assert.True(t, sw.closed, "the next Esc closes the window")
	assert.Equal(t, settings.Settings{}, stored(t, st), "closing without Save keeps the stored settings")
	s.OpenSettings()
	assert.NotSame(t, sw, s.settingsWin, "Ctrl+, opens a new one after a close")
}

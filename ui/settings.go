package ui

import (
	"context"
	"os"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/driver/desktop"
	"fyne.io/fyne/v2/layout"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core/protocol"
	"atelier/core/settings"
)

// SettingsServices are what the Settings window changes besides the stored
// values: the worker, which restarts for new worker settings, and the runner,
// which takes a new output folder at once. Without them (nil) the studio has
// no Settings window.
type SettingsServices struct {
	Worker WorkerControl
	Output OutputFolder
	// Requirements is the worker's requirements file: a Python named in the
	// window must have them.
	Requirements string
	// Lookup reads the environment, whose variables win over the settings;
	// nil is os.LookupEnv.
	Lookup func(string) (string, bool)
	// RayNote says where the studio's queue runs when a Ray address was
	// saved: on the cluster, or why not.
	RayNote string
}

// WorkerControl is the app's bridge as the Settings window sees it.
type WorkerControl interface {
	// Hello is the latest worker's handshake, with the devices it found.
	Hello() (protocol.Hello, bool)
	// Reconfigure restarts the worker with these settings: at once when it
	// is idle, after the job in flight otherwise.
	Reconfigure(python string, env []string) (changed, afterJob bool)
	// Start starts the worker if none runs.
	Start(ctx context.Context) error
}

// OutputFolder is the runner's images folder.
type OutputFolder interface {
	SetImagesFolder(dir string)
	ImagesFolder() string
}

// settingsShortcut opens the Settings window: Ctrl+, (Cmd+, on macOS), as in
// most desktop apps.
var settingsShortcut = &desktop.CustomShortcut{KeyName: fyne.KeyComma, Modifier: fyne.KeyModifierShortcutDefault}

// The speed modes' explanations under the choice.
var speedHints = map[settings.Speed]string{
	settings.SpeedFast: "Full compile with CUDA graphs: the fastest steps on an NVIDIA GPU, but the first " +
		"image after each worker start compiles for minutes, and again at each new size.",
	settings.SpeedBalanced: "The worker's defaults: a short compile of the UNet's blocks on an NVIDIA GPU; " +
		"nothing extra on the CPU or an Apple GPU.",
	settings.SpeedLowVRAM: "For a GPU with little memory: each model moves to the GPU only while it runs, and " +
		"large images decode in tiles. About three times slower.",
}

// workerRestartNote says what happens to the worker settings.
const workerRestartNote = "Device, speed and Python take effect after the current job: the worker restarts " +
	"between jobs. The output folder and the model folders apply at once."

// rayHintText says what the Ray address does.
const rayHintText = "With an address, the studio's queue runs its jobs on that cluster's actors from the next " +
	"start of Atelier (Generate stays on this machine), as `atelier queue run --ray saved` does."

// settingsWindow is the preferences window: its fields show the stored
// settings until Save checks, stores and applies them.
type settingsWindow struct {
	s   *Studio
	svc *SettingsServices
	win fyne.Window

	device       *widget.Select
	deviceValues []string // the Select's options as settings values
	speed        *widget.RadioGroup
	speedHint    *widget.Label
	python       *escEntry
	pythonCheck  *widget.Button
	pythonInfo   *widget.Label
	folders      *fyne.Container // one row per model folder
	addFolder    *widget.Button
	output       *escEntry
	outputChoose *widget.Button
	ray          *escEntry
	envNote      *widget.Label // variables of the environment that win
	errs         map[string]*widget.Label
	status       *widget.Label
	save         *widget.Button
	closeButton  *widget.Button

	saved  settings.Settings // as stored
	busy   bool              // a Save (or a Python check) is running
	closed bool
}

// setupSettings gives the studio its Settings menu entry and shortcut.
func (s *Studio) setupSettings() {
	if s.x == nil || s.x.svc.Settings == nil {
		return
	}
	item := fyne.NewMenuItem("Settings…", s.OpenSettings)
	item.Shortcut = settingsShortcut
	item.Icon = theme.SettingsIcon()
	// The driver runs a menu item's shortcut before the focused field sees
	// it, so Ctrl+, works while the user types a prompt.
	s.win.SetMainMenu(fyne.NewMainMenu(fyne.NewMenu("File", item)))
}

// settingsWorkerReady offers the devices of a worker that has just started
// in an open Settings window, keeping the device chosen there.
func (s *Studio) settingsWorkerReady() {
	if sw := s.settingsWin; sw != nil && !sw.closed {
		sw.setDevices(sw.devices(), sw.chosenDevice())
	}
}

// OpenSettings shows the Settings window, or brings it to the front.
func (s *Studio) OpenSettings() {
	if s.x == nil || s.x.svc.Settings == nil {
		return
	}
	if sw := s.settingsWin; sw != nil && !sw.closed {
		sw.win.RequestFocus()
		return
	}
	s.settingsWin = newSettingsWindow(s)
	s.settingsWin.win.Show()
}

func newSettingsWindow(s *Studio) *settingsWindow {
	sw := &settingsWindow{s: s, svc: s.x.svc.Settings, errs: map[string]*widget.Label{}}
	sw.win = s.app.NewWindow("Atelier Settings")
	for _, f := range []string{"device", "speed", "python", "folders", "output_folder", "ray_address"} {
		sw.errs[f] = errLabel()
	}
	sw.device = widget.NewSelect(nil, func(string) { sw.clear("device") })
	sw.speed = widget.NewRadioGroup(nil, func(string) { sw.clear("speed"); sw.showSpeedHint() })
	sw.speed.Horizontal = true
	sw.speed.Required = true
	for _, m := range settings.Speeds {
		sw.speed.Options = append(sw.speed.Options, m.Label())
	}
	sw.speedHint = hintText("")
	sw.python = newEscEntry()
	sw.python.SetPlaceHolder("Atelier's own (leave empty)")
	sw.python.OnChanged = func(string) { sw.clear("python"); sw.setPythonInfo("") }
	sw.python.OnSubmitted = func(string) { sw.Save() }
	sw.pythonCheck = widget.NewButton("Check", sw.CheckPython)
	sw.pythonInfo = hintText("")
	sw.pythonInfo.Hide() // shown with a check's result
	sw.folders = container.NewVBox()
	sw.addFolder = widget.NewButtonWithIcon("Add folder…", theme.FolderNewIcon(), sw.AddFolder)
	sw.output = newEscEntry()
	sw.output.SetPlaceHolder("Atelier's images folder (leave empty)")
	sw.output.OnChanged = func(string) { sw.clear("output_folder") }
	sw.output.OnSubmitted = func(string) { sw.Save() }
	sw.outputChoose = widget.NewButtonWithIcon("Choose…", theme.FolderOpenIcon(), sw.ChooseOutput)
	sw.ray = newEscEntry()
	sw.ray.SetPlaceHolder("HOST:6379 or ray://HOST:10001")
	sw.ray.OnChanged = func(string) { sw.clear("ray_address") }
	sw.ray.OnSubmitted = func(string) { sw.Save() }
	sw.envNote = hintText("")
	sw.status = hintText("")
	sw.save = widget.NewButtonWithIcon("Save", theme.DocumentSaveIcon(), sw.Save)
	sw.save.Importance = widget.HighImportance
	sw.closeButton = widget.NewButton("Close", sw.Close)

	sw.win.SetContent(withTips(sw.win.Canvas(), sw.layout()))
	sw.win.Resize(fyne.NewSize(640, 700))
	sw.win.Canvas().SetOnTypedKey(func(k *fyne.KeyEvent) {
		if k.Name == fyne.KeyEscape {
			sw.Close()
		}
	})
	sw.win.SetOnClosed(func() { sw.closed = true })
	sw.load()
	return sw
}

// settingsLabels are the captions of the window's rows: the widest sets the
// width of the caption column in every group, so the fields line up.
var settingsLabels = []string{"Device", "Speed", "Worker Python", "Model folders", "Output folder", "Ray address"}

func (sw *settingsWindow) layout() fyne.CanvasObject {
	var width float32
	for _, text := range settingsLabels {
		width = max(width, widget.NewLabel(text).MinSize().Width)
	}
	row := func(label string, field fyne.CanvasObject, below ...fyne.CanvasObject) []fyne.CanvasObject {
		l := widget.NewLabel(label)
		l.Alignment = fyne.TextAlignTrailing
		return []fyne.CanvasObject{container.New(minWidth(width), l),
			container.NewVBox(append([]fyne.CanvasObject{field}, below...)...)}
	}
	grid := func(rows ...[]fyne.CanvasObject) fyne.CanvasObject {
		var objs []fyne.CanvasObject
		for _, r := range rows {
			objs = append(objs, r...)
		}
		return container.New(layout.NewFormLayout(), objs...)
	}
	note := hintText(workerRestartNote)
	worker := grid(
		row("Device", sw.device, sw.errs["device"]),
		row("Speed", sw.speed, sw.speedHint, sw.errs["speed"]),
		row("Worker Python", container.NewBorder(nil, nil, nil, sw.pythonCheck, sw.python), sw.pythonInfo, sw.errs["python"]),
	)
	folders := grid(
		row("Model folders", container.NewVBox(sw.folders, container.NewHBox(sw.addFolder)), sw.errs["folders"]),
		row("Output folder", container.NewBorder(nil, nil, nil, sw.outputChoose, sw.output),
			hintText("Each day's images go into a folder of their own inside it."), sw.errs["output_folder"]),
	)
	rayHint := []fyne.CanvasObject{hintText(rayHintText)}
	if sw.svc.RayNote != "" {
		rayHint = append(rayHint, hintText(sw.svc.RayNote))
	}
	ray := grid(row("Ray address", sw.ray, append(rayHint, sw.errs["ray_address"])...))
	body := container.NewVBox(
		heading("Worker"), note, worker, sw.envNote,
		widget.NewSeparator(), heading("Folders"), folders,
		widget.NewSeparator(), heading("Ray"), ray,
	)
	buttons := container.NewBorder(nil, nil, nil, container.NewHBox(sw.closeButton, sw.save), sw.status)
	return container.NewBorder(nil, container.NewPadded(container.NewVBox(widget.NewSeparator(), buttons)), nil, nil,
		container.NewVScroll(container.NewPadded(body)))
}

// hintText is a wrapped label for explanations under a field.
func hintText(text string) *widget.Label {
	l := widget.NewLabel(text)
	l.Wrapping = fyne.TextWrapWord
	l.SizeName = theme.SizeNameCaptionText
	return l
}

// load shows the stored settings (read off the UI goroutine) and the
// library's folders.
func (sw *settingsWindow) load() {
	st := sw.s.x.svc.Store
	sw.setDevices(nil, "")
	go func() {
		stored, err := settings.Load(context.Background(), st)
		sw.s.do(func() {
			sw.saved = stored
			sw.show(stored)
			if err != nil {
				sw.setStatus(widget.DangerImportance, err.Error())
			}
		})
	}()
	sw.refreshFolders()
}

// show puts s into the fields.
func (sw *settingsWindow) show(s settings.Settings) {
	sw.setDevices(sw.devices(), s.Device)
	sw.speed.SetSelected(s.SpeedOrDefault().Label())
	sw.showSpeedHint()
	sw.python.SetText(s.Python)
	sw.setPythonInfo("")
	sw.output.SetText(s.OutputFolder)
	sw.ray.SetText(s.RayAddress)
	sw.showEnvNote()
	for f := range sw.errs {
		sw.clear(f)
	}
}

// devices are those of the latest worker's hello, or nil before one started.
func (sw *settingsWindow) devices() []protocol.Device {
	if h, ok := sw.svc.Worker.Hello(); ok {
		return h.Devices
	}
	return nil
}

// setDevices offers auto, each device the worker found (cuda:N by nvidia-smi's index) and
// the CPU; before a worker has started, the kinds alone. A chosen device the
// worker lacks stays offered, marked, so that Save can say so.
func (sw *settingsWindow) setDevices(devices []protocol.Device, chosen string) {
	values := settings.DeviceChoices(devices)
	var labels []string
	if devices == nil {
		values = []string{"", "cuda", "mps", "cpu"}
	}
	named := map[string]string{}
	n := 0
	for _, d := range devices {
		switch d.Kind {
		case "cuda":
			named["cuda:"+settings.CUDAIndex(n)] = d.Name // nvidia-smi's number
			n++
		default:
			if _, ok := named[d.Kind]; !ok {
				named[d.Kind] = d.Name
			}
		}
	}
	found := false
	for _, v := range values {
		found = found || v == chosen
	}
	if !found {
		values = append(values, chosen)
	}
	for _, v := range values {
		switch {
		case v == "":
			labels = append(labels, "Auto: the best the worker finds")
		case named[v] != "":
			labels = append(labels, v+" · "+named[v])
		case !found && v == chosen:
			labels = append(labels, v+" (the worker has none)")
		default:
			labels = append(labels, v)
		}
	}
	sw.deviceValues = values
	sw.device.SetOptions(labels)
	for i, v := range values {
		if v == chosen {
			sw.device.SetSelectedIndex(i)
		}
	}
}

func (sw *settingsWindow) chosenDevice() string {
	if i := sw.device.SelectedIndex(); i >= 0 && i < len(sw.deviceValues) {
		return sw.deviceValues[i]
	}
	return ""
}

func (sw *settingsWindow) chosenSpeed() settings.Speed {
	for _, m := range settings.Speeds {
		if m.Label() == sw.speed.Selected {
			return m
		}
	}
	return settings.SpeedBalanced
}

func (sw *settingsWindow) showSpeedHint() { sw.speedHint.SetText(speedHints[sw.chosenSpeed()]) }

// showEnvNote names the variables of the environment that win over the
// window's worker settings.
func (sw *settingsWindow) showEnvNote() {
	lookup := sw.lookup()
	var set []string
	for _, k := range append([]string{settings.EnvDevice, settings.EnvPython}, settings.SpeedVars...) {
		if v, ok := lookup(k); ok && v != "" {
			set = append(set, k+"="+v)
		}
	}
	if len(set) == 0 {
		sw.envNote.SetText("")
		sw.envNote.Hide()
		return
	}
	sw.envNote.SetText("Set in Atelier's environment, so they win over these settings: " + strings.Join(set, ", ") + ".")
	sw.envNote.Show()
}

func (sw *settingsWindow) lookup() func(string) (string, bool) {
	if sw.svc.Lookup != nil {
		return sw.svc.Lookup
	}
	return os.LookupEnv
}

// setPythonInfo shows what a check of the Python found; empty hides it.
func (sw *settingsWindow) setPythonInfo(text string) {
	sw.pythonInfo.SetText(text)
	if text == "" {
		sw.pythonInfo.Hide()
	} else {
		sw.pythonInfo.Show()
	}
}

// clear hides a field's error.
func (sw *settingsWindow) clear(field string) {
	if l := sw.errs[field]; l != nil && l.Visible() {
		l.SetText("")
		l.Hide()
	}
}

func (sw *settingsWindow) showError(field, msg string) {
	l := sw.errs[field]
	if l == nil {
		l = sw.errs["device"]
	}
	l.SetText(msg)
	l.Show()
}

func (sw *settingsWindow) setStatus(imp widget.Importance, text string) {
	sw.status.Importance = imp
	sw.status.SetText(text)
}

// Close closes the window; what was not saved is dropped.
func (sw *settingsWindow) Close() {
	sw.closed = true
	sw.win.Close()
}

// minWidth lays its objects over each other, at least w wide.
type minWidth float32

func (m minWidth) MinSize(objects []fyne.CanvasObject) fyne.Size {
	var size fyne.Size
	for _, o := range objects {
		size = size.Max(o.MinSize())
	}
	return size.Max(fyne.NewSize(float32(m), 0))
}

func (m minWidth) Layout(objects []fyne.CanvasObject, size fyne.Size) {
	for _, o := range objects {
		o.Resize(size)
		o.Move(fyne.NewPos(0, 0))
	}
}

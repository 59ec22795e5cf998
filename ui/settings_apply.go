package ui

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/theme"
	"fyne.io/fyne/v2/widget"

	"atelier/core/library"
	"atelier/core/settings"
	"atelier/core/setup"
)

// Status texts after a Save.
const (
	savedText          = "Saved."
	savedRestartNow    = "Saved. The worker restarts now with the new settings."
	savedRestartLater  = "Saved. The worker restarts after the current job, with the new settings."
	checkingPythonText = "Checking the Python…"
	rayLaterText       = "The queue takes the Ray address when Atelier next starts."
)

// read is the settings as the fields show them.
func (sw *settingsWindow) read() settings.Settings {
	return settings.Settings{
		Device:       sw.chosenDevice(),
		Speed:        sw.chosenSpeed(),
		Python:       strings.TrimSpace(sw.python.Text),
		OutputFolder: strings.TrimSpace(sw.output.Text),
		RayAddress:   strings.TrimSpace(sw.ray.Text),
	}
}

// Save checks the fields (the Python by running it), stores them and applies
// them: the output folder at once, the worker settings through a restart
// between jobs. A field that is wrong is marked and nothing is stored.
func (sw *settingsWindow) Save() {
	if sw.busy {
		return
	}
	next := sw.read()
	if next.Speed == settings.SpeedBalanced {
		next.Speed = "" // the default, stored as none
	}
	if err := next.Check(sw.devices()); err != nil {
		sw.fail(err)
		return
	}
	sw.setBusy(true)
	if next.Python != "" {
		sw.setStatus(widget.MediumImportance, checkingPythonText)
	}
	st := sw.s.x.svc.Store
	go func() {
		var notes []string
		var err error
		if next.Python != "" {
			_, notes, err = setup.CheckWorkerPython(context.Background(), next.Python, sw.svc.Requirements)
			if err != nil {
				err = &settings.Error{Field: "python", Message: err.Error()}
			}
		}
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			err = settings.Save(ctx, st, next)
			cancel()
		}
		sw.s.do(func() {
			sw.setBusy(false)
			if err != nil {
				sw.fail(err)
				return
			}
			rayChanged := next.RayAddress != sw.saved.RayAddress
			sw.saved = next
			sw.setPythonInfo(strings.Join(notes, "; "))
			msg := sw.apply(next)
			if rayChanged {
				msg += " " + rayLaterText
			}
			sw.setStatus(widget.SuccessImportance, msg)
		})
	}()
}

// apply gives the runner and the worker the saved settings, and says what
// happens to the worker.
func (sw *settingsWindow) apply(next settings.Settings) string {
	sw.svc.Output.SetImagesFolder(next.OutputFolder)
	w := settings.Resolve(next, settings.Flags{}, sw.lookup())
	changed, afterJob := sw.svc.Worker.Reconfigure(w.Python, w.Env)
	switch {
	case !changed:
		return savedText
	case afterJob || sw.s.job != nil:
		return savedRestartLater
	default:
		// Started now, so that the next Generate finds it ready; the studio
		// names its start-up stages as at launch.
		sw.s.WarmUp(sw.svc.Worker.Start)
		return savedRestartNow
	}
}

// fail marks the field an error names, or says it in the status.
func (sw *settingsWindow) fail(err error) {
	var se *settings.Error
	if errors.As(err, &se) {
		sw.showError(se.Field, se.Message)
		sw.setStatus(widget.DangerImportance, "Fix the marked setting; nothing was saved.")
		return
	}
	sw.setStatus(widget.DangerImportance, "The settings could not be saved: "+err.Error())
}

func (sw *settingsWindow) setBusy(b bool) {
	sw.busy = b
	for _, w := range []fyne.Disableable{sw.save, sw.pythonCheck} {
		if b {
			w.Disable()
		} else {
			w.Enable()
		}
	}
}

// CheckPython runs the Python of the field and says whether it can run the
// worker, without saving.
func (sw *settingsWindow) CheckPython() {
	path := strings.TrimSpace(sw.python.Text)
	sw.clear("python")
	if path == "" {
		sw.setPythonInfo("Empty: the worker runs on Atelier's own Python.")
		return
	}
	if sw.busy {
		return
	}
	sw.setBusy(true)
	sw.setPythonInfo(checkingPythonText)
	go func() {
		py, notes, err := setup.CheckWorkerPython(context.Background(), path, sw.svc.Requirements)
		sw.s.do(func() {
			sw.setBusy(false)
			if err != nil {
				sw.setPythonInfo("")
				sw.showError("python", err.Error())
				return
			}
			msg := "Python " + py.Version + " with the worker's libraries."
			if len(notes) > 0 {
				msg += " Note: " + strings.Join(notes, "; ") + "."
			}
			sw.setPythonInfo(msg)
		})
	}()
}

// ChooseOutput asks for the output folder (Save applies it).
func (sw *settingsWindow) ChooseOutput() {
	choose := sw.s.x.svc.ChooseFolder
	go func() {
		dir, err := choose("Folder for the generated images")
		sw.s.do(func() {
			switch {
			case err != nil:
				sw.showError("output_folder", "The folder dialog failed: "+err.Error())
			case dir != "":
				sw.output.SetText(dir)
			}
		})
	}()
}

// AddFolder asks for a model folder and adds it to the library at once; the
// studio's model lists rescan.
func (sw *settingsWindow) AddFolder() {
	choose := sw.s.x.svc.ChooseFolder
	st := sw.s.x.svc.Store
	go func() {
		dir, err := choose("Add a model folder")
		if err == nil && dir != "" {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err = library.AddLibraryFolder(ctx, st, dir)
			cancel()
		}
		sw.s.do(func() {
			if err != nil {
				sw.showError("folders", "That folder cannot be added: "+err.Error())
				return
			}
			sw.clear("folders")
			sw.refreshFolders()
			sw.s.form.rescan()
		})
	}()
}

// removeFolder takes a folder off the library (its files stay on disk).
func (sw *settingsWindow) removeFolder(dir string) {
	st := sw.s.x.svc.Store
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := library.RemoveLibraryFolder(ctx, st, dir)
		cancel()
		sw.s.do(func() {
			if err != nil {
				sw.showError("folders", "That folder cannot be removed: "+err.Error())
				return
			}
			sw.refreshFolders()
			sw.s.form.rescan()
		})
	}()
}

// refreshFolders shows the library's folders, a row each.
func (sw *settingsWindow) refreshFolders() {
	st := sw.s.x.svc.Store
	go func() {
		folders, err := library.LibraryFolders(context.Background(), st)
		sw.s.do(func() {
			if err != nil {
				sw.showError("folders", err.Error())
			}
			sw.showFolders(folders)
		})
	}()
}

// showFolders lists Atelier's own models folder first, with no remove
// button: the library always scans it and downloads go there. The folders
// the user added follow.
func (sw *settingsWindow) showFolders(folders []string) {
	sw.folders.RemoveAll()
	own := sw.s.x.svc.Paths.Models
	if own != "" {
		name := widget.NewLabel(displayFolder(own))
		name.Truncation = fyne.TextTruncateEllipsis
		sw.folders.Add(container.NewVBox(name, hintText("Atelier's models folder: always scanned, and downloads go here.")))
	}
	added := library.ScanFolders(own, folders)
	if own != "" {
		added = added[1:]
	}
	if len(added) == 0 {
		sw.folders.Add(hintText("No folders of your own yet: Add folder… adds one (its files stay where they are)."))
	}
	for _, dir := range added {
		name := widget.NewLabel(displayFolder(dir))
		name.Truncation = fyne.TextTruncateEllipsis
		remove := newTipButton(theme.DeleteIcon(), "Remove "+filepath.Base(dir)+" from the library (its files stay)", func() { sw.removeFolder(dir) })
		sw.folders.Add(container.NewBorder(nil, nil, nil, remove, name))
	}
	sw.folders.Refresh()
}

// displayFolder is a folder as the window shows it: under the home folder,
// with ~ for it.
func displayFolder(dir string) string {
	if home, err := os.UserHomeDir(); err == nil && home != "/" && strings.HasPrefix(dir, home+string(filepath.Separator)) {
		return "~" + dir[len(home):]
	}
	return dir
}

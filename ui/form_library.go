package ui

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"atelier/core/jobs"
	"atelier/core/library"
	"atelier/core/protocol"
)

// otherAppsHome is the home folder searched for other apps' model folders on
// first use; tests point it elsewhere.
var otherAppsHome = os.UserHomeDir

// capabilitySource is a generator that knows the worker's capabilities from
// its latest hello (jobs.Runner over the bridge); nil before a worker started.
type capabilitySource interface {
	Capabilities() *protocol.Capabilities
}

// attach takes the choices from what the app has: the worker's capabilities
// (once one has started) and the model library of the folders in the
// settings, scanned off the UI goroutine.
func (f *form) attach(gen generator, hist History) {
	f.refreshCapabilities(gen)
	if st, ok := hist.(library.SettingsStore); ok {
		f.settings = st
		f.rescan()
	}
}

// rescan reads the model folders and scans them in the background.
func (f *form) rescan() {
	st := f.settings
	if st == nil {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var found []string
		if home, err := otherAppsHome(); err == nil {
			found, _ = library.DiscoverLibraryFolders(ctx, st, home) // first use only
		}
		folders, err := library.LibraryFolders(ctx, st)
		if err != nil {
			return // the library is an aid: the tiny parts and Browse… still work
		}
		lib := library.ScanLibrary(library.ScanFolders(f.ownModels, folders))
		f.fields.do(func() {
			f.setLibrary(lib)
			if f.onLibrary != nil {
				f.onLibrary(lib)
			}
			if len(found) > 0 && f.onNote != nil {
				f.onNote(fmt.Sprintf("Found the model folders of other apps and added them to the library: %s (%d models).",
					strings.Join(found, ", "), len(lib.Entries)))
			}
		})
	}()
}

// addLibraryFolder adds a model folder chosen in the app and rescans.
func (f *form) addLibraryFolder(dir string) {
	st := f.settings
	if st == nil {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := library.AddLibraryFolder(ctx, st, dir); err != nil {
			f.fields.do(func() { f.showErrorText(fModel, "That folder cannot be added: "+err.Error()) })
			return
		}
		f.rescan()
	}()
}

// refreshCapabilities rebuilds the choices from the latest hello, if any.
func (f *form) refreshCapabilities(gen generator) {
	if src, ok := gen.(capabilitySource); ok {
		if c := src.Capabilities(); c != nil {
			f.setCapabilities(c)
		}
	}
}

// afterJob shows what the job reported beyond its images, and the choices of
// the worker that ran it (a restarted worker may say something new).
func (f *form) afterJob(gen generator, out *jobs.JobOutcome) {
	f.showResult(out)
	f.refreshCapabilities(gen)
}

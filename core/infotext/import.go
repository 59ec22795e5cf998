package infotext

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"atelier/core/library"
	"atelier/core/media"
	"atelier/core/request"
)

// ErrNoSettings marks a PNG that carries no generation settings (test with errors.Is).
var ErrNoSettings = errors.New("no generation settings")

// ImportedSettings are the settings read back from a PNG.
type ImportedSettings struct {
	Request request.Request `json:"request"`
	Notes   []string        `json:"notes,omitempty"` // values that could not be used
	Text    string          `json:"parameters"`      // the infotext as found
}

// Models is where an import looks for the models a picture names.
type Models struct {
	Dir     string           // the models folder: a model folder of the picture's model name in it
	Library *library.Library // checkpoints by name or by "Model hash", LoRAs by name; may be nil
	// NoHashing leaves "Model hash" out of the search: hashing the library's
	// checkpoints the first time takes seconds each, too long for a caller
	// that waits (it can call ByHash later, elsewhere).
	NoHashing bool
}

// ImportPNG reads the generation settings a PNG carries in its `parameters`
// text chunk (ours, and AUTOMATIC1111's infotext). They are the picture's
// whole settings: what the text does not say is the default, not what base
// (the form) had, except the form's own choices that no picture records (the
// model, when the text names none that is here; the batch size, previews and
// output folder). Known model names are resolved: the tiny demo models, a
// folder of that name in models.Dir, or a checkpoint of the library of that
// name or, failing that, with that "Model hash". Values the form's validation
// refuses are not used, and each gets a note.
func ImportPNG(path string, base request.Request, models Models) (*ImportedSettings, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	chunks, err := media.ReadPNGText(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	text, ok := chunks["parameters"]
	if !ok || strings.TrimSpace(text) == "" {
		return nil, fmt.Errorf("%s has %w (no \"parameters\" text chunk): "+
			"only PNGs from Atelier, AUTOMATIC1111 and compatible tools carry them", path, ErrNoSettings)
	}
	it := ParseInfotext(text)
	req := request.DefaultRequest()
	req.Model, req.BatchSize, req.PreviewEvery, req.OutputDir = base.Model, base.BatchSize, base.PreviewEvery, base.OutputDir
	notes := it.ApplyWith(&req, models.Library)
	m, _ := it.Get("Model")
	hash, _ := it.Get("Model hash")
	if p, ok := models.find(m, hash); ok {
		req.Model = p
	} else if m == "" {
		notes = append(notes, fmt.Sprintf("the picture names no model; keeping %s", req.Model))
	} else if m != request.ModelName(req.Model) {
		withHash := ""
		if hash != "" {
			withHash = " (hash " + hash + ")"
		}
		notes = append(notes, fmt.Sprintf("model %q%s is not in the models folder or the model library; keeping %s", m, withHash, req.Model))
	}
	return &ImportedSettings{Request: req, Notes: notes, Text: text}, nil
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// find is the model a picture's "Model" name and "Model hash" stand for.
func (m Models) find(name, hash string) (string, bool) {
	switch {
	case name == request.TinyModel || name == request.TinySingleFile:
		return name, true // Atelier's own generated models
	case name != "" && m.Dir != "" && dirExists(filepath.Join(m.Dir, name)):
		return filepath.Join(m.Dir, name), true
	}
	if name != "" {
		if e, ok := m.Library.Named(library.KindCheckpoint, name); ok {
			return e.Path, true
		}
	}
	if hash != "" && !m.NoHashing {
		return m.ByHash(hash) // renamed since, or named otherwise by another app
	}
	return "", false
}

// ByHash is the library's checkpoint whose AUTOMATIC1111 short hash is hash.
func (m Models) ByHash(hash string) (string, bool) {
	e, ok := m.Library.WithShortHash(library.KindCheckpoint, hash)
	return e.Path, ok
}

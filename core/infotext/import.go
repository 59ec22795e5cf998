package infotext

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

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

// ImportPNG reads the generation settings a PNG carries in its `parameters`
// text chunk (ours, and AUTOMATIC1111's infotext). They are the picture's
// whole settings: what the text does not say is the default, not what base
// (the form) had, except the form's own choices that no picture records (the
// model, when the text names none that is here; the batch size, previews and
// output folder). Known model names are resolved: "tiny", or a folder of that
// name under modelsDir. Values the form's validation refuses are not used, and
// each gets a note.
func ImportPNG(path string, base request.Request, modelsDir string) (*ImportedSettings, error) {
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
	notes := it.ApplyTo(&req)
	switch m, _ := it.Get("Model"); {
	case m == "":
		notes = append(notes, fmt.Sprintf("the picture names no model; keeping %s", req.Model))
	case m == request.TinyModel:
		req.Model = request.TinyModel
	case modelsDir != "" && dirExists(filepath.Join(modelsDir, m)):
		req.Model = filepath.Join(modelsDir, m)
	case m != request.ModelName(req.Model):
		notes = append(notes, fmt.Sprintf("model %q is not in the models folder; keeping %s", m, req.Model))
	}
	return &ImportedSettings{Request: req, Notes: notes, Text: text}, nil
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

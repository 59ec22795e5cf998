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
// text chunk (ours, and AUTOMATIC1111's infotext) onto base. Known model names
// are resolved: "tiny", or a folder of that name under modelsDir.
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
	req := base
	notes := it.ApplyTo(&req)
	if m, ok := it.Get("Model"); ok && m != "" {
		switch {
		case m == request.TinyModel:
			req.Model = request.TinyModel
		case modelsDir != "" && dirExists(filepath.Join(modelsDir, m)):
			req.Model = filepath.Join(modelsDir, m)
		case m != request.ModelName(req.Model):
			notes = append(notes, fmt.Sprintf("model %q is not in the models folder; keeping %s", m, req.Model))
		}
	}
	return &ImportedSettings{Request: req, Notes: notes, Text: text}, nil
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

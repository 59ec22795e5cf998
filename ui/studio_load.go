package ui

import (
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // dropped JPEGs: their size
	_ "image/png"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"fyne.io/fyne/v2"

	"atelier/core/infotext"
	"atelier/core/request"
)

// Dropped loads the settings of the first PNG dropped onto the window into the form.
func (s *Studio) Dropped(uris []fyne.URI) {
	for _, u := range uris {
		if u.Scheme() != "file" {
			continue
		}
		switch strings.ToLower(filepath.Ext(u.Path())) {
		case ".png":
			s.ImportPNG(u.Path())
			return
		case ".jpg", ".jpeg", ".webp":
			s.dropInit(u.Path())
			return
		}
	}
	if len(uris) > 0 {
		s.status.set(statusWarn, "Drop a PNG made by Atelier or AUTOMATIC1111 to load its settings, or any PNG, JPEG or WebP image to start from it (img2img).", "")
	}
}

// dropInit makes a dropped picture that carries no settings the init image,
// at its own size where it can be read.
func (s *Studio) dropInit(path string) {
	w, h := 0, 0
	if f, err := os.Open(path); err == nil {
		if cfg, _, err := image.DecodeConfig(f); err == nil {
			w, h = cfg.Width, cfg.Height
		}
		f.Close()
	}
	s.useAsInit(path, w, h)
}

// ImportPNG reads a PNG's generation settings into the form.
func (s *Studio) ImportPNG(path string) {
	base, verr := s.form.request()
	if verr != nil {
		base = request.DefaultRequest()
	}
	models := infotext.Models{Library: s.form.lib, NoHashing: true}
	if s.x != nil {
		models.Dir = s.x.svc.Paths.Models
	}
	got, err := infotext.ImportPNG(path, base, models)
	if errors.Is(err, infotext.ErrNoSettings) {
		s.dropInit(path) // a picture from elsewhere: start from it
		return
	}
	if err != nil {
		s.status.set(statusError, sentence(err.Error()), "")
		return
	}
	s.form.set(got.Request)
	if s.x != nil {
		s.x.tabs.SelectIndex(tabStudio)
	}
	msg := "Loaded the settings of " + filepath.Base(path) + "."
	if hash, ok := infotext.ParseInfotext(got.Text).Get("Model hash"); ok && got.Request.Model == base.Model {
		go s.findModelByHash(models, hash, got, msg)
	}
	if len(got.Notes) > 0 {
		s.status.set(statusWarn, msg+" Not used: "+strings.Join(got.Notes, "; ")+".", got.Text)
		return
	}
	s.status.set(statusDone, msg, "")
}

// findModelByHash looks in the library for the checkpoint of an imported
// picture's "Model hash" (off the UI thread: a first hash of each checkpoint
// reads the whole file) and chooses it, unless the form was changed meanwhile.
func (s *Studio) findModelByHash(models infotext.Models, hash string, got *infotext.ImportedSettings, msg string) {
	p, ok := models.ByHash(hash)
	if !ok {
		return
	}
	s.do(func() {
		if cur, err := s.form.request(); err != nil || !reflect.DeepEqual(cur, got.Request) {
			return
		}
		r := got.Request
		r.Model = p
		s.form.set(r)
		msg += " Found its model by its hash: " + filepath.Base(p) + "."
		var notes []string
		for _, n := range got.Notes {
			if !strings.HasPrefix(n, "model ") {
				notes = append(notes, n)
			}
		}
		if len(notes) > 0 {
			s.status.set(statusWarn, msg+" Not used: "+strings.Join(notes, "; ")+".", got.Text)
			return
		}
		s.status.set(statusDone, msg, "")
	})
}

// useSettings fills the form with a request from the history and shows it.
func (s *Studio) useSettings(r request.Request) {
	r.OutputDir = ""
	if r.BatchSize == 0 {
		r.BatchSize = 1
	}
	s.form.set(r)
	if s.x != nil {
		s.x.tabs.SelectIndex(tabStudio)
	}
	s.status.set(statusInfo, fmt.Sprintf("Settings loaded (seed %d). Generate or add to the queue.", r.Seed), "")
}

// useAsInit makes a finished image the init image of the form (A1111's "send
// to img2img"): the size becomes the image's, and what does not go with an
// init image (the hires pass, an old mask) is cleared.
func (s *Studio) useAsInit(path string, width, height int) {
	f := s.form
	f.img2img.initImage.SetText(path)
	f.img2img.mask.SetText("")
	f.hires.scale.SetText("")
	if width > 0 && height > 0 {
		f.size.fit(width, height)
	}
	f.clearErrors()
	f.openSectionOf(fInitImage)
	if s.x != nil {
		s.x.tabs.SelectIndex(tabStudio)
	}
	s.status.set(statusInfo, fmt.Sprintf("%s is the init image. Describe the change, set the denoising strength, then Generate.",
		filepath.Base(path)), "")
}

package ui

import (
	"fmt"
	"path/filepath"

	"atelier/core/request"
)

// headerSummary is what a folded section adds to its header: the settings it
// holds that change the job, so that a closed section does not hide them
// ("Hires fix · 2× to 2048 × 2048", "LoRA (2)"). Empty when it changes nothing.
func (f *form) headerSummary(s foldedSection, r request.Request) string {
	switch s {
	case f.lora:
		if n := len(r.LoRAs); n > 0 {
			return fmt.Sprintf(" (%d)", n)
		}
	case f.controlNet:
		if n := len(r.ControlNets); n > 0 {
			return fmt.Sprintf(" (%d)", n)
		}
	case f.refiner:
		if r.Refiner != "" {
			return " · " + modelLabel(r.Refiner)
		}
	case f.vae:
		if r.VAE != "" {
			return " · " + filepath.Base(r.VAE)
		}
	case f.img2img:
		switch {
		case r.InitImage != "" && r.MaskImage != "":
			return fmt.Sprintf(" · inpaint, strength %g", r.Strength)
		case r.InitImage != "":
			return fmt.Sprintf(" · img2img, strength %g", r.Strength)
		}
	case f.hires:
		if r.HiresScale > 0 && r.Width > 0 && r.Height > 0 {
			w, h := r.HiresSize()
			return fmt.Sprintf(" · %g× to %d × %d", r.HiresScale, w, h)
		}
	case f.upscale:
		if r.Upscaler != "" && r.Upscale > 0 {
			return fmt.Sprintf(" · ×%g %s", r.Upscale, filepath.Base(r.Upscaler))
		}
	case f.batch:
		n, _ := f.count()
		size := max(r.BatchSize, 1)
		switch {
		case n > 1 && size > 1:
			return fmt.Sprintf(" · %d jobs of %d images", n, size)
		case n > 1:
			return fmt.Sprintf(" · %d jobs", n)
		case size > 1:
			return fmt.Sprintf(" · %d images", size)
		}
	}
	return ""
}

// updateHeaders writes each folded section's header from what the form holds.
func (f *form) updateHeaders() {
	if f.accordion == nil {
		return
	}
	r, _ := f.request()
	changed := false
	for i, s := range f.folded {
		t := foldedTitles[i] + f.headerSummary(s, r)
		if it := f.accordion.Items[i]; it.Title != t {
			it.Title = t
			changed = true
		}
	}
	if changed {
		f.accordion.Refresh()
	}
}

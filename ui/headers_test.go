package ui

import (
	"slices"
	"testing"

	"fyne.io/fyne/v2/test"
	"github.com/stretchr/testify/assert"
)

// A closed section's header names what it holds, so that a folded Hires fix
// cannot make a bigger image than the form seems to ask for.
func TestFoldedHeadersNameTheirSettings(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	f := s.form
	header := func(sec foldedSection) string {
		return f.accordion.Items[slices.Index(f.folded, sec)].Title
	}
	setForm(s, "a lighthouse", 4, 64, 64)
	assert.Equal(t, "Hires fix", header(f.hires), "off: the plain title")
	assert.Equal(t, "LoRA", header(f.lora))

	f.hires.scale.SetText("2")
	assert.Equal(t, "Hires fix · 2× to 128 × 128", header(f.hires))
	f.size.width.SetText("96")
	assert.Equal(t, "Hires fix · 2× to 192 × 128", header(f.hires), "the header follows the size")

	test.Tap(f.lora.add)
	test.Tap(f.lora.add)
	assert.Equal(t, "LoRA (2)", header(f.lora))
	f.lora.removeRow(f.lora.rows[0])
	assert.Equal(t, "LoRA (1)", header(f.lora))

	f.batch.batchCount.SetText("3")
	assert.Equal(t, "Batch · 3 jobs", header(f.batch))

	f.hires.scale.SetText("")
	assert.Equal(t, "Hires fix", header(f.hires), "turned off again")
}

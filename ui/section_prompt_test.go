package ui

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPastedLineEndsBecomeNewlines(t *testing.T) {
	s := newTestStudio(t, &fakeGen{}, &memHistory{})
	s.form.prompts.prompt.SetText("a fox\r\nin snow\rat dusk")
	s.form.prompts.negative.SetText("blurry\r\nlowres")
	r, verr := s.form.request()
	require.Nil(t, verr)
	assert.Equal(t, "a fox\nin snow\nat dusk", r.Prompt)
	assert.Equal(t, "blurry\nlowres", r.NegativePrompt)
}

package request

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestValidateWire(t *testing.T) {
	r := DefaultRequest()
	r.Prompt = "p"
	err := r.ValidateWire()
	v, ok := AsValidation(err)
	require.True(t, ok, "a default request has no seed or output folder yet: %v", err)
	assert.NotNil(t, v.Field("seed"))
	assert.NotNil(t, v.Field("output_dir"))
	r.Seed, r.OutputDir = 42, filepath.Join(t.TempDir(), "out")
	require.NoError(t, r.ValidateWire())
}

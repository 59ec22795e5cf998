//go:build linux

package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core"
)

func TestHistoryImportReadsAGeneratedPNG(t *testing.T) {
	requireWorker(t)
	h := newHome(t)
	args := append(append([]string{}, tinyArgs...), "--negative", "fog, rain", "--cfg", "6.5")
	stdout, stderr, code := h.run(args...)
	require.Equal(t, 0, code, stderr)
	png := strings.TrimSpace(stdout)

	out, stderr, code := h.run("history", "import", png, "--json")
	require.Equal(t, 0, code, stderr)
	var got core.ImportedSettings
	require.NoError(t, json.Unmarshal([]byte(out), &got), out)
	r := got.Request
	assert.Equal(t, "a lighthouse", r.Prompt)
	assert.Equal(t, "fog, rain", r.NegativePrompt)
	assert.Equal(t, core.TinyModel, r.Model)
	assert.Equal(t, 4, r.Steps)
	assert.Equal(t, 6.5, r.CFG)
	assert.Equal(t, int64(7), r.Seed)
	assert.Equal(t, 64, r.Width)
	assert.Equal(t, 64, r.Height)
	assert.Empty(t, got.Notes)

	// The settings are kept as the form's last ones, for the next window.
	s, err := core.OpenStore(filepath.Join(h.dir, "data", "atelier.db"))
	require.NoError(t, err)
	defer s.Close()
	last, ok, err := s.LastRequest(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, r, last)

	table, _, code := h.run("history", "import", png)
	require.Equal(t, 0, code)
	assert.Contains(t, table, "seed:")
	assert.Contains(t, table, "a lighthouse")

	_, stderr, code = h.run("history", "import", filepath.Join(t.TempDir(), "missing.png"))
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "missing.png")
}

//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/infotext"
	"atelier/core/protocol"
	"atelier/core/request"
	"atelier/core/store"
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
	var got infotext.ImportedSettings
	require.NoError(t, json.Unmarshal([]byte(out), &got), out)
	r := got.Request
	assert.Equal(t, "a lighthouse", r.Prompt)
	assert.Equal(t, "fog, rain", r.NegativePrompt)
	assert.Equal(t, request.TinyModel, r.Model)
	assert.Equal(t, 4, r.Steps)
	assert.Equal(t, 6.5, r.CFG)
	assert.Equal(t, int64(7), r.Seed)
	assert.Equal(t, 64, r.Width)
	assert.Equal(t, 64, r.Height)
	assert.Empty(t, got.Notes)

	// The settings are kept as the form's last ones, for the next window.
	s, err := store.OpenStore(filepath.Join(h.dir, "data", "atelier.db"))
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

func TestHistorySearchFindsImagesAsTheGalleryDoes(t *testing.T) {
	h := newHome(t)
	s, err := store.OpenStore(filepath.Join(h.dir, "data", "atelier.db"))
	require.NoError(t, err)
	record := func(prompt, model string, seed int64) store.ImageRecord {
		req := request.DefaultRequest()
		req.Prompt, req.Model, req.Seed, req.Steps, req.Width, req.Height = prompt, model, seed, 4, 64, 64
		id, err := s.CreateJob(t.Context(), fmt.Sprintf("job-%d", seed), req)
		require.NoError(t, err)
		p := writeTestPNG(t, filepath.Join(h.dir, fmt.Sprintf("img-%d.png", seed)), 64, 64, false)
		require.NoError(t, s.FinishJob(t.Context(), id, &protocol.Metrics{TotalS: 1, DenoiseS: 1, ItS: 4},
			[]protocol.ImageResult{{Path: p, Seed: seed, Width: 64, Height: 64}}))
		imgs, err := s.SearchImages(t.Context(), store.GalleryQuery{}, 0, 1)
		require.NoError(t, err)
		return imgs[0]
	}
	lighthouse := record("a lighthouse at dusk", "tiny", 1)
	record("a red fox in the snow", "tiny", 2)
	brittany := record("lighthouses of Brittany", "/models/sdxl", 3)
	require.NoError(t, s.SetStarred(t.Context(), brittany.ID, true))
	require.NoError(t, s.Close())

	out, stderr, code := h.run("history", "search", "--json", "lightho")
	require.Equal(t, 0, code, stderr)
	var got []store.ImageRecord
	require.NoError(t, json.Unmarshal([]byte(out), &got), out)
	paths := func(imgs []store.ImageRecord) []string {
		var p []string
		for _, im := range imgs {
			p = append(p, im.Path)
		}
		return p
	}
	assert.Equal(t, []string{brittany.Path, lighthouse.Path}, paths(got), "the last word as a prefix, newest first")

	out, _, code = h.run("history", "search", "--json", "--model", "tiny", "lighthouse")
	require.Equal(t, 0, code)
	require.NoError(t, json.Unmarshal([]byte(out), &got))
	assert.Equal(t, []string{lighthouse.Path}, paths(got))

	out, _, code = h.run("history", "search", "--starred")
	require.Equal(t, 0, code)
	assert.Contains(t, out, "lighthouses of Brittany")
	assert.NotContains(t, out, "fox")

	out, stderr, code = h.run("history", "search", "--json", "owl")
	require.Equal(t, 0, code, stderr)
	assert.JSONEq(t, "[]", out)

	_, stderr, code = h.run("history", "search")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "give words")
}

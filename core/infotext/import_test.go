package infotext

import (
	"encoding/json"
	"image/color"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/internal/pngtest"
	"atelier/core/request"
)

func TestImportPNG(t *testing.T) {
	dir := t.TempDir()
	models := filepath.Join(dir, "models")
	require.NoError(t, os.MkdirAll(filepath.Join(models, "sdxl-base"), 0o755))

	// Our own chunk: exactly what the worker writes (the infotext golden).
	own, err := os.ReadFile(filepath.Join("testdata", "infotext", "atelier_own.txt"))
	require.NoError(t, err)
	p := filepath.Join(dir, "own.png")
	pngtest.Write(t, p, 64, 64, color.White, pngtest.Text("parameters", strings.TrimSpace(string(own))))
	base := request.DefaultRequest()
	base.Model = "/somewhere/else"
	got, err := ImportPNG(p, base, models)
	require.NoError(t, err)
	assert.Equal(t, "a lighthouse", got.Request.Prompt)
	assert.Equal(t, 4, got.Request.Steps)
	assert.Equal(t, int64(7), got.Request.Seed)
	assert.Equal(t, 64, got.Request.Width)
	assert.Equal(t, "euler", got.Request.Scheduler)
	assert.Equal(t, request.TinyModel, got.Request.Model)
	assert.Empty(t, got.Notes)

	// AUTOMATIC1111's infotext, in an iTXt chunk as some tools write it.
	a1111, err := os.ReadFile(filepath.Join("testdata", "infotext", "a1111_full.txt"))
	require.NoError(t, err)
	var golden Infotext
	gb, err := os.ReadFile(filepath.Join("testdata", "infotext", "a1111_full.golden.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(gb, &golden))
	p = filepath.Join(dir, "a1111.png")
	pngtest.Write(t, p, 64, 64, color.White, pngtest.IText("parameters", string(a1111), true))
	got, err = ImportPNG(p, base, models)
	require.NoError(t, err)
	assert.Equal(t, golden.Prompt, got.Request.Prompt)
	assert.Equal(t, golden.NegativePrompt, got.Request.NegativePrompt)
	want := base
	golden.ApplyTo(&want)
	assert.Equal(t, want.Steps, got.Request.Steps)
	assert.Equal(t, want.Seed, got.Request.Seed)
	assert.Equal(t, want.CFG, got.Request.CFG)

	// A model folder of that name under the models folder is used.
	p = filepath.Join(dir, "named.png")
	pngtest.Write(t, p, 64, 64, color.White, pngtest.Text("parameters", "x\nSteps: 4, Seed: 1, Size: 64x64, Model: sdxl-base"))
	got, err = ImportPNG(p, base, models)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(models, "sdxl-base"), got.Request.Model)
	p = filepath.Join(dir, "unknown.png")
	pngtest.Write(t, p, 64, 64, color.White, pngtest.Text("parameters", "x\nSteps: 4, Seed: 1, Size: 64x64, Model: nowhere"))
	got, err = ImportPNG(p, base, models)
	require.NoError(t, err)
	assert.Equal(t, base.Model, got.Request.Model)
	require.Len(t, got.Notes, 1)
	assert.Contains(t, got.Notes[0], "nowhere")

	p = filepath.Join(dir, "plain.png")
	pngtest.Write(t, p, 8, 8, color.White)
	_, err = ImportPNG(p, base, models)
	assert.ErrorContains(t, err, "no generation settings")
}

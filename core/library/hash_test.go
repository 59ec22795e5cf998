package library

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func shortOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])[:10]
}

func TestShortHashIsA1111sAndRemembered(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.safetensors")
	require.NoError(t, os.WriteFile(p, []byte("weights"), 0o644))
	h, err := ShortHash(p)
	require.NoError(t, err)
	assert.Equal(t, shortOf([]byte("weights")), h)

	// Same path, size and time: the remembered hash stands (the file is not read again).
	fi, err := os.Stat(p)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(p, []byte("WEIGHTS"), 0o644))
	require.NoError(t, os.Chtimes(p, fi.ModTime(), fi.ModTime()))
	h, err = ShortHash(p)
	require.NoError(t, err)
	assert.Equal(t, shortOf([]byte("weights")), h)

	// Touched: hashed again.
	require.NoError(t, os.Chtimes(p, fi.ModTime(), fi.ModTime().Add(time.Second)))
	h, err = ShortHash(p)
	require.NoError(t, err)
	assert.Equal(t, shortOf([]byte("WEIGHTS")), h)

	_, err = ShortHash(filepath.Join(t.TempDir(), "missing.safetensors"))
	assert.Error(t, err)
}

func TestLibraryNamedAndWithShortHash(t *testing.T) {
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "Renamed.safetensors")
	require.NoError(t, os.WriteFile(ckpt, []byte("checkpoint"), 0o644))
	lib := &Library{Entries: []LibraryEntry{
		{Path: filepath.Join(dir, "folder-model"), Name: "folder-model", Kind: KindCheckpoint, Format: "diffusers"},
		{Path: ckpt, Name: "Renamed", Kind: KindCheckpoint, Format: "safetensors"},
		{Path: filepath.Join(dir, "old.ckpt"), Name: "old.ckpt", Kind: KindUnknown, Format: "pickle", Refused: "pickle"},
		{Path: filepath.Join(dir, "detail.safetensors"), Name: "detail", Kind: KindLoRA, Format: "safetensors"},
	}}
	e, ok := lib.Named(KindLoRA, "Detail")
	assert.True(t, ok, "names match whatever their case")
	assert.Equal(t, filepath.Join(dir, "detail.safetensors"), e.Path)
	_, ok = lib.Named(KindCheckpoint, "detail")
	assert.False(t, ok, "a LoRA is not a checkpoint")
	e, ok = lib.Named(KindCheckpoint, "renamed.safetensors")
	assert.True(t, ok)
	assert.Equal(t, ckpt, e.Path)

	e, ok = lib.WithShortHash(KindCheckpoint, shortOf([]byte("checkpoint")))
	assert.True(t, ok)
	assert.Equal(t, ckpt, e.Path)
	_, ok = lib.WithShortHash(KindCheckpoint, shortOf([]byte("other")))
	assert.False(t, ok)
	_, ok = lib.WithShortHash(KindCheckpoint, shortOf([]byte("checkpoint"))[:8])
	assert.False(t, ok, "the legacy 8-digit hash is of another thing")
	var none *Library
	_, ok = none.WithShortHash(KindCheckpoint, "0123456789")
	assert.False(t, ok)
	_, ok = none.Named(KindLoRA, "x")
	assert.False(t, ok)
}

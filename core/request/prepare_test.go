package request

import (
	"os"
	"path/filepath"
	"testing"

	"atelier/core/failure"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCheckModel(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "full")
	require.NoError(t, os.MkdirAll(filepath.Join(full, "unet"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(full, "model_index.json"), []byte("{}"), 0o644))
	noIndex := filepath.Join(dir, "no-index")
	require.NoError(t, os.MkdirAll(filepath.Join(noIndex, "unet"), 0o755))
	noUnet := filepath.Join(dir, "no-unet")
	require.NoError(t, os.MkdirAll(noUnet, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(noUnet, "model_index.json"), []byte("{}"), 0o644))
	st := filepath.Join(dir, "model.safetensors")
	require.NoError(t, os.WriteFile(st, nil, 0o644))
	for _, name := range []string{"a.ckpt", "b.PT", "c.bin", "d.txt"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), nil, 0o644))
	}

	for _, tc := range []struct {
		model    string
		code     failure.ErrorCode // empty: accepted
		contains string
	}{
		{"tiny", "", ""},
		{full, "", ""},
		{st, "", ""},
		{filepath.Join(dir, "missing"), failure.ErrModelNotFound, "does not exist"},
		{noIndex, failure.ErrModelNotFound, "model_index.json"},
		{noUnet, failure.ErrModelNotFound, "unet/"},
		{filepath.Join(dir, "a.ckpt"), failure.ErrUnsupported, "pickle"},
		{filepath.Join(dir, "b.PT"), failure.ErrUnsupported, "pickle"},
		{filepath.Join(dir, "c.bin"), failure.ErrUnsupported, "pickle"},
		{filepath.Join(dir, "d.txt"), failure.ErrUnsupported, ".safetensors"},
	} {
		t.Run(filepath.Base(tc.model), func(t *testing.T) {
			got, err := CheckModel(tc.model)
			if tc.code == "" {
				require.NoError(t, err)
				assert.Equal(t, tc.model, got)
				return
			}
			var jerr *failure.JobError
			require.ErrorAs(t, err, &jerr)
			assert.Equal(t, tc.code, jerr.Code)
			assert.Equal(t, "model", jerr.Field)
			assert.Contains(t, jerr.Message, tc.contains)
		})
	}

	t.Run("relative path", func(t *testing.T) {
		t.Chdir(dir)
		got, err := CheckModel("full")
		require.NoError(t, err)
		assert.Equal(t, full, got, "the worker runs elsewhere, so it gets an absolute path")
	})
}

func TestResolveSeed(t *testing.T) {
	r := Request{Seed: -1, BatchSize: 8}
	require.NoError(t, r.ResolveSeed())
	assert.GreaterOrEqual(t, r.Seed, int64(0))
	assert.Less(t, r.Seed, int64(randomSeedLimit))

	r = Request{Seed: 42}
	require.NoError(t, r.ResolveSeed())
	assert.Equal(t, int64(42), r.Seed, "a given seed is kept")

	r = Request{Seed: MaxSeed, BatchSize: 1}
	require.NoError(t, r.ResolveSeed())
	r = Request{Seed: MaxSeed - 1, BatchSize: 3}
	assert.Error(t, r.ResolveSeed())
}

func TestPrepareForQueue(t *testing.T) {
	r := queueRequest("x")
	r.Seed, r.BatchSize = -1, 0
	p, err := PrepareForQueue(r)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, p.Seed, int64(0), "the queue shows the seed that will run")
	assert.Equal(t, 1, p.BatchSize)
	bad := r
	bad.Model = "/no/such/model"
	_, err = PrepareForQueue(bad)
	var jerr *failure.JobError
	require.ErrorAs(t, err, &jerr)
	assert.Equal(t, "model", jerr.Field)
}

// queueRequest and tinyRequest are the requests of the queue and runner tests.
func queueRequest(prompt string) Request {
	r := tinyRequest()
	r.Prompt, r.Seed = prompt, 11
	return r
}

func tinyRequest() Request {
	r := DefaultRequest()
	r.Prompt, r.Steps, r.Width, r.Height = "a lighthouse", 4, 64, 64
	return r
}

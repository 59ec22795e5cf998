// Package sttest writes small .safetensors files for tests.
package sttest

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// Write writes a valid .safetensors file at path whose tensors (4 float32
// zeros each) carry the given names.
func Write(t testing.TB, path string, keys ...string) string {
	t.Helper()
	header := map[string]any{"__metadata__": map[string]string{"format": "pt"}}
	for i, k := range keys {
		header[k] = map[string]any{"dtype": "F32", "shape": []int{4}, "data_offsets": []int{i * 16, (i + 1) * 16}}
	}
	h, err := json.Marshal(header)
	require.NoError(t, err)
	var buf []byte
	buf = binary.LittleEndian.AppendUint64(buf, uint64(len(h)))
	buf = append(buf, h...)
	buf = append(buf, make([]byte, 16*len(keys))...)
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, buf, 0o644))
	return path
}

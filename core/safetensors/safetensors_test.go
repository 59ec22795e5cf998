package safetensors

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"atelier/core/internal/sttest"
)

func TestKeysRejectsNonSafetensors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.safetensors")
	require.NoError(t, os.WriteFile(p, append(binary.LittleEndian.AppendUint64(nil, 1<<40), '{'), 0o644))
	_, err := Keys(p)
	assert.ErrorContains(t, err, "not a safetensors file")
	for name, content := range map[string][]byte{
		"empty":         nil,
		"short":         {1, 2, 3},
		"past the file": append(binary.LittleEndian.AppendUint64(nil, 64), `{"a":1}`...),
		"not JSON":      append(binary.LittleEndian.AppendUint64(nil, 4), "abcd"...),
		"a JSON list":   append(binary.LittleEndian.AppendUint64(nil, 2), "[]"...),
	} {
		require.NoError(t, os.WriteFile(p, content, 0o644))
		_, err := Keys(p)
		assert.ErrorContains(t, err, "not a safetensors file", name)
	}
	sttest.Write(t, p, "a", "b")
	keys, err := Keys(p)
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b"}, keys)
}

func TestLoRAMark(t *testing.T) {
	for _, keys := range [][]string{
		{"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", "lora_unet_x.alpha"},
		{"unet.down_blocks.0.attentions.0.to_q.lora_A.weight"},
		{"unet.down_blocks.0.attentions.0.processor.to_q_lora.down.weight"},
		{"lora_unet_x.lokr_w1"},
		{"lora_unet_x.hada_w1_a"},
	} {
		assert.NotEmpty(t, LoRAMark(keys), "%v", keys)
	}
	assert.Empty(t, LoRAMark([]string{"encoder.conv_in.weight", "decoder.conv_out.weight"}))
	assert.Empty(t, LoRAMark(nil))
}

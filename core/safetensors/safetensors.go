// Package safetensors reads what a .safetensors file says about itself
// without loading a tensor: its header's tensor names.
package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// ErrNotSafetensors is wrapped by Keys's error for a file whose header is not
// a safetensors header.
var ErrNotSafetensors = errors.New("not a safetensors file")

// maxHeaderBytes bounds a safetensors header (real ones are well under 10 MB).
const maxHeaderBytes = 100 << 20

// Keys reads the tensor names of a .safetensors file from its header: an
// 8-byte little-endian length, then that much JSON. No tensor data is read.
func Keys(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var n uint64
	if err := binary.Read(f, binary.LittleEndian, &n); err != nil {
		return nil, fmt.Errorf("%w: too short for a header (%v)", ErrNotSafetensors, err)
	}
	if n < 2 || n > maxHeaderBytes {
		return nil, fmt.Errorf("%w: header length %d is out of range", ErrNotSafetensors, n)
	}
	if fi, err := f.Stat(); err == nil && int64(n)+8 > fi.Size() {
		return nil, fmt.Errorf("%w: header length %d beyond the file's %d bytes", ErrNotSafetensors, n, fi.Size())
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotSafetensors, err)
	}
	var header map[string]json.RawMessage
	if err := json.Unmarshal(buf, &header); err != nil {
		return nil, fmt.Errorf("%w: the header is not a JSON object (%v)", ErrNotSafetensors, err)
	}
	keys := make([]string, 0, len(header))
	for k := range header {
		if k != "__metadata__" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys, nil
}

// loraMarks are the parts of tensor names that only LoRA-family files have:
// kohya's and diffusers/PEFT's names, and LyCORIS's LoKr and LoHa.
var loraMarks = []string{"lora_A", "lora_B", "lora_down", "lora_up", "lora_unet_", "lora_te", ".lora.", "_lora.",
	"lora.down", "lora.up", "lokr_", "hada_w"}

// LoRAMark returns the first LoRA mark found in keys, or "" when no tensor
// name is a LoRA's.
func LoRAMark(keys []string) string {
	for _, k := range keys {
		for _, m := range loraMarks {
			if strings.Contains(k, m) {
				return m
			}
		}
	}
	return ""
}

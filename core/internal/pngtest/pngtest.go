// Package pngtest writes PNG files with chosen text chunks, for tests of the code that reads them.
package pngtest

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// Chunk encodes one PNG chunk with its CRC.
func Chunk(typ string, data []byte) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.BigEndian, uint32(len(data))) //nolint:errcheck // a bytes.Buffer does not fail
	b.WriteString(typ)
	b.Write(data)
	crc := crc32.NewIEEE()
	crc.Write([]byte(typ))
	crc.Write(data)
	binary.Write(&b, binary.BigEndian, crc.Sum32()) //nolint:errcheck // idem
	return b.Bytes()
}

// Write writes a w×h PNG of one colour with extra chunks after IHDR.
func Write(t testing.TB, path string, w, h int, c color.Color, chunks ...[]byte) {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, c)
		}
	}
	var buf bytes.Buffer
	require.NoError(t, png.Encode(&buf, img))
	b := buf.Bytes()
	const ihdrEnd = 8 + 8 + 13 + 4 // signature, IHDR head, IHDR data, CRC
	out := append([]byte{}, b[:ihdrEnd]...)
	for _, ch := range chunks {
		out = append(out, ch...)
	}
	out = append(out, b[ihdrEnd:]...)
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, out, 0o644))
}

// Text is a tEXt chunk.
func Text(key, value string) []byte { return Chunk("tEXt", []byte(key+"\x00"+value)) }

// ZText is a zTXt (compressed) chunk.
func ZText(key, value string) []byte {
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write([]byte(value)) //nolint:errcheck // a bytes.Buffer does not fail
	zw.Close()
	return Chunk("zTXt", append([]byte(key+"\x00\x00"), z.Bytes()...))
}

// IText is an iTXt chunk, compressed or not.
func IText(key, value string, compressed bool) []byte {
	flag := byte(0)
	body := []byte(value)
	if compressed {
		flag = 1
		var z bytes.Buffer
		zw := zlib.NewWriter(&z)
		zw.Write(body) //nolint:errcheck // a bytes.Buffer does not fail
		zw.Close()
		body = z.Bytes()
	}
	data := append([]byte(key+"\x00"), flag, 0)
	data = append(data, []byte("en\x00"+key+"\x00")...)
	return Chunk("iTXt", append(data, body...))
}

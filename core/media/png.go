// Package media handles image files: the text chunks of a PNG, cached
// thumbnails, and atomic writes.
package media

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

var pngSignature = []byte("\x89PNG\r\n\x1a\n")

// maxTextChunk bounds one text chunk (and its inflated text), so that a
// hostile file cannot make us allocate without limit.
const maxTextChunk = 8 << 20

// ReadPNGText returns the text chunks (tEXt, zTXt, iTXt) of a PNG by keyword.
// Other chunks are skipped without being read into memory.
func ReadPNGText(r io.Reader) (map[string]string, error) {
	br := bufio.NewReader(r)
	sig := make([]byte, len(pngSignature))
	if _, err := io.ReadFull(br, sig); err != nil || !bytes.Equal(sig, pngSignature) {
		return nil, errors.New("not a PNG file")
	}
	out := map[string]string{}
	var head [8]byte
	for {
		if _, err := io.ReadFull(br, head[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil // no IEND: keep what we found
			}
			return nil, fmt.Errorf("PNG chunk: %w", err)
		}
		n := binary.BigEndian.Uint32(head[:4])
		typ := string(head[4:8])
		switch typ {
		case "tEXt", "zTXt", "iTXt":
			if n > maxTextChunk {
				return nil, fmt.Errorf("PNG %s chunk of %d bytes is too large", typ, n)
			}
			data := make([]byte, n)
			if _, err := io.ReadFull(br, data); err != nil {
				return nil, fmt.Errorf("PNG %s chunk: %w", typ, err)
			}
			if k, v, err := decodeTextChunk(typ, data); err == nil {
				out[k] = v
			}
			if _, err := br.Discard(4); err != nil { // CRC
				return out, nil
			}
		case "IEND":
			return out, nil
		default:
			if _, err := br.Discard(int(n) + 4); err != nil {
				return out, nil
			}
		}
	}
}

func decodeTextChunk(typ string, data []byte) (string, string, error) {
	key, rest, ok := bytes.Cut(data, []byte{0})
	if !ok {
		return "", "", errors.New("no keyword")
	}
	switch typ {
	case "tEXt":
		return string(key), latin1(rest), nil
	case "zTXt":
		if len(rest) < 1 {
			return "", "", errors.New("short zTXt")
		}
		s, err := inflateText(rest[1:])
		return string(key), latin1([]byte(s)), err
	default: // iTXt: flag, method, language\0, translated keyword\0, text
		if len(rest) < 2 {
			return "", "", errors.New("short iTXt")
		}
		compressed := rest[0] == 1
		rest = rest[2:]
		if _, rest, ok = bytes.Cut(rest, []byte{0}); !ok {
			return "", "", errors.New("iTXt without language")
		}
		if _, rest, ok = bytes.Cut(rest, []byte{0}); !ok {
			return "", "", errors.New("iTXt without translated keyword")
		}
		if compressed {
			s, err := inflateText(rest)
			return string(key), s, err
		}
		return string(key), string(rest), nil
	}
}

func inflateText(b []byte) (string, error) {
	zr, err := zlib.NewReader(bytes.NewReader(b))
	if err != nil {
		return "", err
	}
	defer zr.Close()
	s, err := io.ReadAll(io.LimitReader(zr, maxTextChunk))
	return string(s), err
}

// latin1 decodes tEXt/zTXt text, which PNG defines as Latin-1. Text that is
// already valid UTF-8 (as many tools write, against the letter of the spec)
// is kept as it is.
func latin1(b []byte) string {
	if isUTF8(b) {
		return string(b)
	}
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return string(r)
}

func isUTF8(b []byte) bool { return strings.ToValidUTF8(string(b), "\uFFFD") == string(b) }

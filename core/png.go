package core

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
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

// ErrNoSettings marks a PNG that carries no generation settings (test with errors.Is).
var ErrNoSettings = errors.New("no generation settings")

// ImportedSettings are the settings read back from a PNG.
type ImportedSettings struct {
	Request Request  `json:"request"`
	Notes   []string `json:"notes,omitempty"` // values that could not be used
	Text    string   `json:"parameters"`      // the infotext as found
}

// ImportPNG reads the generation settings a PNG carries in its `parameters`
// text chunk (ours, and AUTOMATIC1111's infotext) onto base. Known model names
// are resolved: "tiny", or a folder of that name under modelsDir.
func ImportPNG(path string, base Request, modelsDir string) (*ImportedSettings, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	chunks, err := ReadPNGText(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	text, ok := chunks["parameters"]
	if !ok || strings.TrimSpace(text) == "" {
		return nil, fmt.Errorf("%s has %w (no \"parameters\" text chunk): "+
			"only PNGs from Atelier, AUTOMATIC1111 and compatible tools carry them", path, ErrNoSettings)
	}
	it := ParseInfotext(text)
	req := base
	notes := it.ApplyTo(&req)
	if m, ok := it.Get("Model"); ok && m != "" {
		switch {
		case m == TinyModel:
			req.Model = TinyModel
		case modelsDir != "" && dirExists(filepath.Join(modelsDir, m)):
			req.Model = filepath.Join(modelsDir, m)
		case m != filepath.Base(req.Model):
			notes = append(notes, fmt.Sprintf("model %q is not in the models folder; keeping %s", m, req.Model))
		}
	}
	return &ImportedSettings{Request: req, Notes: notes, Text: text}, nil
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

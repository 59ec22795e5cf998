package library

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ShortHash is AUTOMATIC1111's short hash of a model file, the one its
// "Model hash" carries: the first 10 hex digits of the file's SHA-256.
// Reading a checkpoint of 7 GB takes a while, so hashes are remembered for
// the life of the process by path, size and modification time (an edited or
// replaced file is hashed again).
func ShortHash(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	key := hashKey{path: filepath.Clean(path), size: fi.Size(), mtime: fi.ModTime()}
	hashes.mu.Lock()
	h, ok := hashes.m[key]
	hashes.mu.Unlock()
	if ok {
		return h, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sum := sha256.New()
	if _, err := io.Copy(sum, f); err != nil {
		return "", err
	}
	h = hex.EncodeToString(sum.Sum(nil))[:10]
	hashes.mu.Lock()
	hashes.m[key] = h
	hashes.mu.Unlock()
	return h, nil
}

type hashKey struct {
	path  string
	size  int64
	mtime time.Time
}

var hashes = struct {
	mu sync.Mutex
	m  map[hashKey]string
}{m: map[hashKey]string{}}

// Named returns the usable entry of kind whose name is name (a file's name
// without .safetensors, a folder's base name), the way other apps' settings
// text names a model. Case is ignored, as on the file systems those apps
// mostly run on.
func (l *Library) Named(kind ModelKind, name string) (LibraryEntry, bool) {
	name = strings.TrimSuffix(strings.TrimSpace(name), ".safetensors")
	for _, e := range l.Of(kind) {
		if strings.EqualFold(e.Name, name) {
			return e, true
		}
	}
	return LibraryEntry{}, false
}

// WithShortHash returns the usable single-file entry of kind whose ShortHash
// is hash. Only files are hashed, and only when asked: a folder model has no
// file that AUTOMATIC1111 would have hashed.
func (l *Library) WithShortHash(kind ModelKind, hash string) (LibraryEntry, bool) {
	hash = strings.ToLower(strings.TrimSpace(hash))
	if len(hash) != 10 {
		return LibraryEntry{}, false // the legacy 8-digit hash was of a part of the file only
	}
	for _, e := range l.Of(kind) {
		if e.Format != "safetensors" {
			continue
		}
		if h, err := ShortHash(e.Path); err == nil && h == hash {
			return e, true
		}
	}
	return LibraryEntry{}, false
}

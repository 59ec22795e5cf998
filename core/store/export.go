package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"atelier/core/media"
)

// ExportedImage is the sidecar written next to each exported PNG: every
// setting and figure the history has of the image.
type ExportedImage struct {
	File    string       `json:"file"`
	Source  string       `json:"source"`
	Detail  *ImageDetail `json:"image"`
	Version int          `json:"version"`
}

// ExportImages copies the images with these ids into dir, each PNG as it is
// (with its parameters chunk) plus a NAME.json sidecar with its settings and
// metrics. A name already taken in dir gets a numbered suffix, so an export
// never overwrites anything. It returns the PNGs written; on error, the ones
// written so far.
func ExportImages(ctx context.Context, s *Store, ids []int64, dir string) ([]string, error) {
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("export: %s is a file, not a folder", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	var out []string
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		d, err := s.GetImage(ctx, id)
		if err != nil {
			return out, fmt.Errorf("export: %w", err)
		}
		dst, err := freeName(dir, filepath.Base(d.Path))
		if err != nil {
			return out, fmt.Errorf("export image %d: %w", id, err)
		}
		if err := media.CopyFileAtomic(d.Path, dst); err != nil {
			return out, fmt.Errorf("export image %d: %w", id, err)
		}
		side, err := json.MarshalIndent(ExportedImage{File: filepath.Base(dst), Source: d.Path, Detail: d, Version: 1}, "", "  ")
		if err != nil {
			return out, fmt.Errorf("export image %d: %w", id, err)
		}
		if err := media.WriteBytesAtomic(strings.TrimSuffix(dst, filepath.Ext(dst))+".json", append(side, '\n')); err != nil {
			return out, fmt.Errorf("export image %d: %w", id, err)
		}
		out = append(out, dst)
	}
	return out, nil
}

// freeName returns dir/name, or dir/name-1, -2 … if that (or its sidecar) exists.
func freeName(dir, name string) (string, error) {
	ext := filepath.Ext(name)
	stem := strings.TrimSuffix(name, ext)
	for i := 0; i < 10000; i++ {
		cand := stem
		if i > 0 {
			cand = fmt.Sprintf("%s-%d", stem, i)
		}
		p := filepath.Join(dir, cand+ext)
		_, err1 := os.Stat(p)
		_, err2 := os.Stat(filepath.Join(dir, cand+".json"))
		if errors.Is(err1, os.ErrNotExist) && errors.Is(err2, os.ErrNotExist) {
			return p, nil
		}
	}
	return "", fmt.Errorf("no free name for %s in %s", name, dir)
}

package media

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"image"
	"os"
	"path/filepath"

	"github.com/disintegration/imaging"
)

// Thumbnailer makes and caches gallery thumbnails as small JPEG files under
// the cache folder, so that the gallery decodes a few KB per tile instead of a
// whole PNG. A thumbnail older than its image is made again.
type Thumbnailer struct {
	Dir  string // where the thumbnails live
	Size int    // longest edge in pixels
}

// NewThumbnailer keeps thumbnails of size pixels under cacheDir/thumbs/<size>.
func NewThumbnailer(cacheDir string, size int) *Thumbnailer {
	return &Thumbnailer{Dir: filepath.Join(cacheDir, "thumbs", fmt.Sprint(size)), Size: size}
}

// Path is where the thumbnail of src lives (it may not exist yet).
func (t *Thumbnailer) Path(src string) string {
	abs, err := filepath.Abs(src)
	if err != nil {
		abs = src
	}
	sum := sha256.Sum256([]byte(abs))
	name := hex.EncodeToString(sum[:16])
	return filepath.Join(t.Dir, name[:2], name+".jpg")
}

// Ensure makes the thumbnail of src if it is missing or stale and returns its path.
func (t *Thumbnailer) Ensure(src string) (string, error) {
	dst := t.Path(src)
	si, err := os.Stat(src)
	if err != nil {
		return "", err
	}
	if di, err := os.Stat(dst); err == nil && !di.ModTime().Before(si.ModTime()) {
		return dst, nil
	}
	img, err := imaging.Open(src)
	if err != nil {
		return "", fmt.Errorf("thumbnail of %s: %w", src, err)
	}
	thumb := imaging.Fit(img, t.Size, t.Size, imaging.Lanczos)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	// Through a temporary file and a rename: a reader never sees half a thumbnail.
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".thumb-*.jpg")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if err := imaging.Encode(tmp, thumb, imaging.JPEG, imaging.JPEGQuality(85)); err != nil {
		tmp.Close()
		return "", fmt.Errorf("thumbnail of %s: %w", src, err)
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", err
	}
	return dst, nil
}

// Load returns the thumbnail of src, making it first if needed.
func (t *Thumbnailer) Load(src string) (image.Image, error) {
	p, err := t.Ensure(src)
	if err != nil {
		return nil, err
	}
	return imaging.Open(p)
}

// Remove deletes the thumbnail of src; a missing one is not an error.
func (t *Thumbnailer) Remove(src string) error {
	if err := os.Remove(t.Path(src)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// DeleteImageFiles removes an image file and its cached thumbnail (thumbs may
// be nil). A file already gone is not an error.
func DeleteImageFiles(path string, thumbs *Thumbnailer) error {
	var errs []error
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if thumbs != nil {
		if err := thumbs.Remove(path); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

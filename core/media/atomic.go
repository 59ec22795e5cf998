package media

import (
	"io"
	"os"
	"path/filepath"
)

// CopyFileAtomic copies src to dst with WriteFileAtomic.
func CopyFileAtomic(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return WriteFileAtomic(dst, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	})
}

// WriteBytesAtomic writes b to dst with WriteFileAtomic.
func WriteBytesAtomic(dst string, b []byte) error {
	return WriteFileAtomic(dst, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// WriteFileAtomic writes dst through a temporary file and a rename, so that a
// watcher of the folder never sees half a file.
func WriteFileAtomic(dst string, write func(io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if err := write(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

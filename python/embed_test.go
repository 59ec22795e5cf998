package python

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestEmbeddedWorkerHasEveryFile compares the embedded files with the folder:
// every file of the worker's package (bytecode caches aside) must be carried.
func TestEmbeddedWorkerHasEveryFile(t *testing.T) {
	var want []string
	err := filepath.WalkDir("atelier_worker", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "__pycache__" {
			return fs.SkipDir
		}
		if !d.IsDir() && !strings.HasSuffix(d.Name(), ".pyc") {
			want = append(want, filepath.ToSlash(path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, "requirements.txt")
	if len(want) < 10 {
		t.Fatalf("found only %d worker files: is the test running in the python folder?", len(want))
	}
	for _, name := range want {
		got, err := fs.ReadFile(Files(), name)
		if err != nil {
			t.Errorf("%s is not embedded: add its pattern to embed.go", name)
			continue
		}
		disk, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(disk) {
			t.Errorf("%s: the embedded copy differs from the file", name)
		}
	}
	if _, err := fs.Stat(Files(), "atelier_worker/__main__.py"); err != nil {
		t.Errorf("atelier_worker/__main__.py is missing, so `python -m atelier_worker` could not start: %v", err)
	}
}

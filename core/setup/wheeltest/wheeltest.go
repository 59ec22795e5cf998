// Package wheeltest writes a tiny pure-Python wheel and a requirements file
// that pins it, so that tests install a real venv with pip in seconds and
// without network (pip --no-index --find-links).
package wheeltest

import (
	"archive/zip"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Package is the wheel's import name; its module has VALUE = 42.
const Package = "atelier_tiny_dep"

// Write puts atelier_tiny_dep-1.0-py3-none-any.whl into dir and a
// requirements file pinning it next to it, and returns the file's path.
func Write(dir string) (requirements string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	info := Package + "-1.0.dist-info"
	files := map[string]string{
		Package + "/__init__.py": "VALUE = 42\n",
		info + "/METADATA":       "Metadata-Version: 2.1\nName: atelier-tiny-dep\nVersion: 1.0\n",
		info + "/WHEEL":          "Wheel-Version: 1.0\nGenerator: wheeltest\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
	}
	order := []string{Package + "/__init__.py", info + "/METADATA", info + "/WHEEL"}
	var record strings.Builder
	for _, name := range order {
		sum := sha256.Sum256([]byte(files[name]))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", name, base64.RawURLEncoding.EncodeToString(sum[:]), len(files[name]))
	}
	record.WriteString(info + "/RECORD,,\n")
	files[info+"/RECORD"] = record.String()
	order = append(order, info+"/RECORD")

	f, err := os.Create(filepath.Join(dir, Package+"-1.0-py3-none-any.whl"))
	if err != nil {
		return "", err
	}
	zw := zip.NewWriter(f)
	for _, name := range order {
		w, err := zw.Create(name)
		if err != nil {
			f.Close()
			return "", err
		}
		if _, err := w.Write([]byte(files[name])); err != nil {
			f.Close()
			return "", err
		}
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	requirements = filepath.Join(dir, "requirements.txt")
	return requirements, os.WriteFile(requirements, []byte("# a tiny stand-in for the worker's pins\natelier-tiny-dep==1.0\n"), 0o644)
}

package ui

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/theme"
	"github.com/go-text/typesetting/font"
)

// TestShownTextHasGlyphs checks every string the window can show against the
// theme's text fonts: a character they lack is drawn as a broken box (the
// hires hint once read "64 × 64 →� 128 × 128").
func TestShownTextHasGlyphs(t *testing.T) {
	var faces []*font.Face
	for _, style := range []fyne.TextStyle{{}, {Bold: true}} {
		face, err := font.ParseTTF(bytes.NewReader(theme.DefaultTheme().Font(style).Content()))
		if err != nil {
			t.Fatal(err)
		}
		faces = append(faces, face)
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil {
				return true
			}
			for _, r := range s {
				if r < 0x20 || r == 0x7f {
					continue
				}
				for _, face := range faces {
					if _, ok := face.NominalGlyph(r); !ok {
						t.Errorf("%s: %q has %q (U+%04X), which the text font lacks", fset.Position(lit.Pos()), s, r, r)
						break
					}
				}
			}
			return true
		})
	}
}

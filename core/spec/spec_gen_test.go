package spec

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"

	"atelier/core/spec/internal/specgen"
)

// TestGeneratedIsFresh fails when spec_gen.go is not what docs/protocol/spec.json
// generates: the JSON changed without regenerating, or the Go file was edited by hand.
func TestGeneratedIsFresh(t *testing.T) {
	data, err := os.ReadFile("../../docs/protocol/spec.json")
	if err != nil {
		t.Fatal(err)
	}
	want, err := specgen.Generate(data)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("spec_gen.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("core/spec/spec_gen.go is stale: run %s\nfirst difference:\n%s", specgen.Command, firstDiff(got, want))
	}
}

func firstDiff(got, want []byte) string {
	g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < max(len(g), len(w)); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("  line %d, spec_gen.go has: %s\n  the spec generates:     %s", i+1, gl, wl)
		}
	}
	return ""
}

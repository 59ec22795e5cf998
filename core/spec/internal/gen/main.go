// Command gen writes spec_gen.go from docs/protocol/spec.json (go generate ./core/spec).
package main

import (
	"flag"
	"fmt"
	"os"

	"atelier/core/spec/internal/specgen"
)

func main() {
	in := flag.String("spec", "../../docs/protocol/spec.json", "the protocol spec")
	out := flag.String("out", "spec_gen.go", "the Go file to write")
	flag.Parse()
	data, err := os.ReadFile(*in)
	if err == nil {
		data, err = specgen.Generate(data)
	}
	if err == nil {
		err = os.WriteFile(*out, data, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

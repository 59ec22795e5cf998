// Package spec holds the worker protocol's shared constants, generated from
// docs/protocol/spec.json, which the Python worker's atelier_worker/spec.py is
// generated from too. Edit the JSON, then run make generate.
package spec

//go:generate go run ./internal/gen -spec ../../docs/protocol/spec.json -out spec_gen.go

//go:build headless

package main

import (
	"fmt"
	"io"
)

// runGUI in a headless build (go build -tags headless) only says that the
// window is missing: such a binary needs no X11 or OpenGL libraries, for GPU
// servers that run `atelier bench` or `atelier generate`.
func runGUI(stderr io.Writer) int {
	fmt.Fprintln(stderr, "atelier: this is a headless build without the studio window; "+
		"use a subcommand (run \"atelier help\"), or a build without the headless tag")
	return exitUsage
}

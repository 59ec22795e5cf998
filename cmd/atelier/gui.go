//go:build !headless

package main

import (
	"fmt"
	"io"
)

// runGUI opens the studio window. Builds with the headless tag (for GPU
// servers without X11 or OpenGL libraries) leave it out.
func runGUI(stderr io.Writer) int {
	a, err := openApp(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "atelier:", err)
		return exitFailure
	}
	defer a.close()
	runStudio(a)
	return exitOK
}

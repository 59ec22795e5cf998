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
	if a.worker.needsSetup() {
		fmt.Fprintf(stderr, "atelier: the worker's Python environment (%s) is not set up yet: the window starts with set-up\n", a.worker.state.Venv)
	}
	runStudio(a, stderr)
	return exitOK
}

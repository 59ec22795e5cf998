//go:build unix && !linux

package bridge

import (
	"os/exec"
	"syscall"
)

// setProcAttr puts the worker in a process group of its own, so that a terminal's
// Ctrl-C reaches only Atelier, which then cancels the job and stops the worker. There
// is no parent-death signal to set here; the worker's closed stdin (and its own watch
// on its parent) ends it when Atelier dies.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

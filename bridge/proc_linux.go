package bridge

import (
	"os/exec"
	"syscall"
)

// setProcAttr puts the worker in a process group of its own, so that a terminal's
// Ctrl-C, which goes to the whole foreground group, reaches only Atelier: Atelier then
// cancels the job and stops the worker itself, instead of the job ending as a crash.
//
// It also makes the kernel kill the worker when Atelier dies, even by SIGKILL, so that
// no worker holds GPU memory as an orphan. Pdeathsig fires when the OS thread that
// started the child exits; the Go runtime only ends threads of goroutines that exit
// while locked to them, which this package never does.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

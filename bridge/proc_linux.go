package bridge

import (
	"os/exec"
	"syscall"
)

// setProcAttr makes the kernel kill the worker when Atelier dies, even by SIGKILL, so
// that no worker holds GPU memory as an orphan. Pdeathsig fires when the OS thread that
// started the child exits; the Go runtime only ends threads of goroutines that exit
// while locked to them, which this package never does.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

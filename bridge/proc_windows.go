package bridge

import (
	"os/exec"
	"syscall"
)

// setProcAttr starts the worker in a console process group of its own, which also
// makes it ignore Ctrl-C: the console's Ctrl-C reaches only Atelier, which then
// cancels the job and stops the worker. The worker's closed stdin (and its own watch
// on its parent) ends it when Atelier dies.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{CreationFlags: syscall.CREATE_NEW_PROCESS_GROUP}
}

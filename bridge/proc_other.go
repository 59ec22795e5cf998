//go:build !linux

package bridge

import "os/exec"

// setProcAttr has no parent-death signal to set outside Linux; there the worker's
// closed stdin (and its own watch on its parent) ends it.
func setProcAttr(cmd *exec.Cmd) {}

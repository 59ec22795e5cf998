//go:build unix

package store

import "syscall"

func diskFullErrno(e syscall.Errno) bool { return e == syscall.ENOSPC || e == syscall.EDQUOT }

//go:build !linux

package devstack

import (
	"os/exec"
	"syscall"
)

func setProcAttrs(cmd *exec.Cmd) { cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} }

func lockThread()   {}
func unlockThread() {}

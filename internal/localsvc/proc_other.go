//go:build !linux

package localsvc

import (
	"os/exec"
	"syscall"
)

type deathSignal = syscall.Signal

type signalName = syscall.Signal

// Outside Linux there is no parent-death signal; Stop still kills the group.
func setProcAttrs(cmd *exec.Cmd, _ deathSignal) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
}

func lockThread()   {}
func unlockThread() {}

func sendSignal(cmd *exec.Cmd, sig signalName) {
	if cmd.Process != nil {
		_ = cmd.Process.Signal(sig)
	}
}

func killGroup(cmd *exec.Cmd) {
	if cmd.Process != nil && cmd.Process.Pid > 0 {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

package localsvc

import (
	"os/exec"
	"runtime"
	"syscall"
)

type deathSignal = syscall.Signal

type signalName = syscall.Signal

func setProcAttrs(cmd *exec.Cmd, sig deathSignal) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = sig
}

func lockThread()   { runtime.LockOSThread() }
func unlockThread() { runtime.UnlockOSThread() }

func sendSignal(cmd *exec.Cmd, sig signalName) {
	if cmd.Process != nil {
		_ = cmd.Process.Signal(sig)
	}
}

// killGroup kills every process of the command's group. The group id is the
// leader's pid because of Setpgid; an already empty group is fine.
func killGroup(cmd *exec.Cmd) {
	if cmd.Process != nil && cmd.Process.Pid > 0 {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

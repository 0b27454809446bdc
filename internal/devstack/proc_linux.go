package devstack

import (
	"os/exec"
	"runtime"
	"syscall"
)

// setProcAttrs puts a child in its own process group, so the terminal's
// Ctrl-C reaches only wrenn dev (which then stops the children in order), and
// gives it SIGTERM as parent-death signal, so a killed wrenn dev still lets
// the daemons shut down cleanly.
func setProcAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// The parent-death signal fires when the forking *thread* exits, so the
// goroutine that starts a child keeps its thread until the child is reaped.
func lockThread()   { runtime.LockOSThread() }
func unlockThread() { runtime.UnlockOSThread() }

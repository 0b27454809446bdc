// Command sysprobe is the init of the seccomp test's sandbox: it makes the
// syscalls the profile is about and prints one "name errno" line for each
// (errno 0: it succeeded), then "done", and waits to be destroyed. Built by
// the test, static.
package main

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	probe := func(name string, fn func() (uintptr, syscall.Errno)) {
		_, errno := fn()
		fmt.Printf("%s %d\n", name, int(errno))
	}
	raw := func(nr uintptr, args ...uintptr) func() (uintptr, syscall.Errno) {
		return func() (uintptr, syscall.Errno) {
			a := append(args, 0, 0, 0, 0, 0, 0)
			r, _, errno := unix.RawSyscall6(nr, a[0], a[1], a[2], a[3], a[4], a[5])
			return r, errno
		}
	}
	probe("unshare-newuser", raw(unix.SYS_UNSHARE, unix.CLONE_NEWUSER))
	probe("unshare-fs", raw(unix.SYS_UNSHARE, unix.CLONE_FS))
	probe("clone-newuser", func() (uintptr, syscall.Errno) {
		r, _, errno := unix.RawSyscall6(unix.SYS_CLONE, unix.CLONE_NEWUSER|uintptr(unix.SIGCHLD), 0, 0, 0, 0, 0)
		if errno == 0 && r == 0 {
			// The child, had the filter let it through: leave at once.
			unix.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
		}
		return r, errno
	})
	probe("clone3", raw(unix.SYS_CLONE3, 0, 0))
	probe("io_uring_setup", raw(unix.SYS_IO_URING_SETUP, 1, 0))
	probe("keyctl", raw(unix.SYS_KEYCTL, unix.KEYCTL_GET_KEYRING_ID, uintptr(0xfffffffd) /* KEY_SPEC_SESSION_KEYRING */, 0))
	probe("setns", raw(unix.SYS_SETNS, ^uintptr(0), 0))
	probe("getpid", raw(unix.SYS_GETPID))
	var ts unix.Timespec
	probe("clock_gettime", raw(unix.SYS_CLOCK_GETTIME, unix.CLOCK_MONOTONIC, uintptr(unsafe.Pointer(&ts))))
	// A plain fork and exec, as every shell does.
	probe("fork-exec", func() (uintptr, syscall.Errno) {
		pid, err := syscall.ForkExec("/bin/true", []string{"true"}, &syscall.ProcAttr{})
		if err != nil {
			return 0, err.(syscall.Errno)
		}
		var ws syscall.WaitStatus
		_, err = syscall.Wait4(pid, &ws, 0, nil)
		if err != nil {
			return 0, err.(syscall.Errno)
		}
		return 0, 0
	})
	fmt.Println("done")
	os.Stdout.Sync()
	// A sandbox whose init is gone counts as failed: stay until destroyed.
	select {}
}

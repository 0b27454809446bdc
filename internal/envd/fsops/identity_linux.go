package fsops

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Identity is a user a filesystem operation is done for: the kernel checks
// that user's permissions, and what the operation creates belongs to the
// user. A nil *Identity is envd's own.
type Identity struct {
	UID, GID uint32
	Groups   []uint32 // supplementary groups
}

// As runs fn with id's identity and returns what fn returns. Every path fn opens,
// creates, lists or removes is then checked by the kernel against id's uid,
// gid and groups, as if the user's own process did it; envd's root
// capabilities do not apply (the kernel drops the effective capabilities of
// a thread whose effective uid leaves 0). File descriptors fn opens stay
// usable by any goroutine afterwards.
//
// fn runs on an OS thread of its own (see onOwnThread) whose credentials
// alone are changed, with raw per-thread system calls (the syscall
// package's Setresuid and Setgroups change every thread of the process).
// The goroutine keeps the thread locked and exits without unlocking it, so
// the runtime destroys the thread instead of running anything else on it;
// threads the runtime starts meanwhile are cloned from its template thread,
// never from a locked one.
func As[T any](id *Identity, fn func() (T, error)) (T, error) {
	if id == nil {
		return fn()
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	onOwnThread(func() {
		defer func() {
			if r := recover(); r != nil {
				done <- result{err: fmt.Errorf("filesystem operation as uid %d panicked: %v", id.UID, r)}
			}
		}()
		if err := id.become(); err != nil {
			done <- result{err: err}
			return
		}
		v, err := fn()
		done <- result{v, err}
	})
	r := <-done
	return r.v, r.err
}

// onOwnThread runs work in a new goroutine locked to an OS thread that is
// not the process's main thread, and ends that thread when work returns.
//
// The runtime cannot end the main thread: it parks it for good when a
// goroutine locked to it exits, and with a user's identity the main thread
// would keep that identity for the life of envd. So a goroutine that lands
// on the main thread holds it, untouched, until a second goroutine, which
// then cannot land there, has locked a thread of its own.
func onOwnThread(work func()) {
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() != unix.Getpid() {
			work()
			return // still locked: the runtime ends the thread
		}
		locked := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			close(locked)
			work()
		}()
		<-locked
		runtime.UnlockOSThread()
	}()
}

// become switches the calling thread's groups, effective gid and effective
// uid (in that order: the last drops the privilege the others need). The
// real and saved ids stay 0, so no process of the user may signal or trace
// envd.
func (id *Identity) become() error {
	groups := id.Groups
	if len(groups) == 0 {
		groups = []uint32{id.GID}
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(unsafe.Pointer(&groups[0])), 0); e != 0 {
		return fmt.Errorf("take the groups of uid %d: %w", id.UID, e)
	}
	keep := ^uintptr(0) // -1: leave the id as it is
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, keep, uintptr(id.GID), keep); e != 0 {
		return fmt.Errorf("take gid %d: %w", id.GID, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, keep, uintptr(id.UID), keep); e != 0 {
		return fmt.Errorf("take uid %d: %w", id.UID, e)
	}
	return nil
}

// Run is As for an fn that returns only an error.
func Run(id *Identity, fn func() error) error {
	_, err := As(id, func() (struct{}, error) { return struct{}{}, fn() })
	return err
}

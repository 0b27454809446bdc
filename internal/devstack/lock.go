package devstack

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// ErrAlreadyRunning reports that another `wrenn dev` holds the stack's lock.
var ErrAlreadyRunning = errors.New("another wrenn dev is already running")

// Lock is the exclusive hold of one stack directory. The kernel drops the
// flock when the process dies however it dies, so a crashed run never blocks
// the next one; the pid inside only helps the error message.
type Lock struct {
	f *os.File
}

// AcquireLock takes the lock at path without waiting, writing this process's
// pid into it. It fails with ErrAlreadyRunning (naming the holder's pid when
// known) if another process holds it.
func AcquireLock(path string) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		buf := make([]byte, 32)
		n, _ := f.ReadAt(buf, 0)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			if pid, perr := strconv.Atoi(string(bytes.TrimSpace(buf[:n]))); perr == nil {
				return nil, fmt.Errorf("%w (pid %d, lock %s): stop it with Ctrl-C in its terminal or `kill %d`", ErrAlreadyRunning, pid, path, pid)
			}
			return nil, fmt.Errorf("%w (lock %s)", ErrAlreadyRunning, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, fmt.Errorf("truncate lock file: %w", err)
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("write lock file: %w", err)
	}
	return &Lock{f: f}, nil
}

// Release empties and unlocks the file. The file itself stays: removing a
// lock file lets a waiter lock a path that another process then recreates.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	_ = l.f.Truncate(0)
	err := l.f.Close() // closing drops the flock
	l.f = nil
	return err
}

package image

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// attachLoop binds file to a free loop device with autoclear (and read-only
// when asked) and returns the open device. Autoclear detaches the device
// on its last close: the caller mounts it and then closes the returned
// file, so from then on the mount alone keeps the device, and unmounting
// frees it. If the caller fails before mounting, closing frees it too.
func attachLoop(file string, readOnly bool) (*os.File, string, error) {
	mode := os.O_RDWR
	flags := uint32(unix.LO_FLAGS_AUTOCLEAR)
	if readOnly {
		mode = os.O_RDONLY
		flags |= unix.LO_FLAGS_READ_ONLY
	}
	backing, err := os.OpenFile(file, mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("open %s for loop device: %w", file, err)
	}
	defer backing.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("open loop control: %w", err)
	}
	defer ctl.Close()

	// The kernel answers every concurrent GET_FREE with the same lowest
	// unbound device and only one configure wins it: with twenty creates at
	// once the unluckiest lost twenty races in a row and gave up. Attaches
	// of this process therefore take turns (a configure takes well under a
	// millisecond); another process may still win a device between GET_FREE
	// and our configure, and then we wait a moment and ask again, and in
	// the end for a device of our own (LOOP_CTL_ADD).
	loopMu.Lock()
	defer loopMu.Unlock()
	var lastErr error
	for attempt := range loopAttempts {
		req := uintptr(unix.LOOP_CTL_GET_FREE)
		if attempt >= loopAttempts/2 {
			req = unix.LOOP_CTL_ADD
		}
		// -1 asks LOOP_CTL_ADD for any unused index; GET_FREE ignores it.
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, ctl.Fd(), req, ^uintptr(0))
		if errno != 0 {
			return nil, "", fmt.Errorf("find free loop device: %w", errno)
		}
		n := int(r)
		dev := "/dev/loop" + strconv.Itoa(n)
		f, err := openLoopDevice(dev, n)
		if err != nil {
			return nil, "", err
		}
		err = configureLoop(f, backing, file, flags)
		if err == nil {
			return f, dev, nil
		}
		_ = f.Close()
		lastErr = err
		if !errors.Is(err, unix.EBUSY) {
			return nil, "", fmt.Errorf("attach %s to %s: %w", file, dev, err)
		}
		time.Sleep(time.Duration(1+rand.IntN(4)) * time.Millisecond)
	}
	return nil, "", fmt.Errorf("attach %s to a loop device: other processes took %d free devices first: %w", file, loopAttempts, lastErr)
}

// loopMu serialises this process's loop attaches (see attachLoop).
var loopMu sync.Mutex

// loopAttempts bounds the devices attachLoop tries before giving up.
const loopAttempts = 16

// openLoopDevice opens /dev/loopN, creating the node when /dev is not a
// devtmpfs that the kernel populates (some containers).
func openLoopDevice(dev string, n int) (*os.File, error) {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		if merr := unix.Mknod(dev, unix.S_IFBLK|0o600, int(unix.Mkdev(7, uint32(n)))); merr != nil && !errors.Is(merr, unix.EEXIST) {
			return nil, fmt.Errorf("create loop device node %s: %w", dev, merr)
		}
		f, err = os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("open loop device %s: %w", dev, err)
	}
	return f, nil
}

// configureLoop binds backing to the loop device f in one LOOP_CONFIGURE
// call, or with LOOP_SET_FD + LOOP_SET_STATUS64 on kernels before 5.8.
func configureLoop(f, backing *os.File, name string, flags uint32) error {
	var info unix.LoopInfo64
	info.Flags = flags
	copy(info.File_name[:len(info.File_name)-1], name)
	cfg := unix.LoopConfig{Fd: uint32(backing.Fd()), Info: info}
	err := unix.IoctlLoopConfigure(int(f.Fd()), &cfg)
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY) {
		return err
	}
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_FD, int(backing.Fd())); err != nil {
		return err
	}
	if err := unix.IoctlLoopSetStatus64(int(f.Fd()), &info); err != nil {
		_ = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
		return err
	}
	return nil
}

// mountLoop loop-mounts an ext4 image file at target.
func mountLoop(file, target string, readOnly bool) error {
	f, dev, err := attachLoop(file, readOnly)
	if err != nil {
		return err
	}
	// Closing after the mount leaves the mount as the device's only user.
	defer f.Close()
	var flags uintptr
	if readOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(dev, target, "ext4", flags, ""); err != nil {
		return fmt.Errorf("mount %s (%s) at %s: %w", file, dev, target, err)
	}
	return nil
}

// unmountAll unmounts everything stacked at path. Not mounted (or missing)
// is success; a lasting EBUSY is returned, so a caller never deletes what
// is still mounted. A short EBUSY is retried: while another process of the
// host creates a mount namespace (runc, runsc's wrapper), the kernel holds
// extra references to every mount it copies, and an unmount in that moment
// sees the mount as busy.
func unmountAll(path string) error {
	busy := 0
	for unmounted := 0; unmounted < 8; {
		err := unix.Unmount(path, 0)
		switch {
		case err == nil:
			unmounted++
			busy = 0
		case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EBUSY) && busy < unmountBusyRetries:
			busy++
			time.Sleep(unmountBusyWait)
		default:
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return fmt.Errorf("unmount %s: still mounted after 8 unmounts", path)
}

// An unmount answered EBUSY is tried again this often, this far apart
// (200 ms in all), before the mount counts as in use.
const (
	unmountBusyRetries = 40
	unmountBusyWait    = 5 * time.Millisecond
)

// loopsBackedBy lists the loop devices (names like "loop3") whose backing
// file is path.
func loopsBackedBy(path string) []string {
	real := path
	if r, err := filepath.EvalSymlinks(path); err == nil {
		real = r
	}
	entries, _ := os.ReadDir("/sys/block")
	var out []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/sys/block", e.Name(), "loop", "backing_file"))
		if err != nil {
			continue // not bound
		}
		bf := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if bf == real || bf == path {
			out = append(out, e.Name())
		}
	}
	return out
}

// waitLoopsFreed waits until no loop device is bound to path. Autoclear
// may detach a little after the unmount returns. Devices still bound after
// the wait (attached without autoclear by a crashed process, say) are
// detached explicitly, once.
func waitLoopsFreed(path string) error {
	if loopsFreed(path, 2*time.Second) {
		return nil
	}
	var errs []error
	for _, l := range loopsBackedBy(path) {
		f, err := os.OpenFile("/dev/"+l, os.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errs = append(errs, fmt.Errorf("open %s: %w", l, err))
			continue
		}
		err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
		_ = f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("detach %s from %s: %w", l, path, err))
		}
	}
	if loopsFreed(path, time.Second) {
		return nil
	}
	return errors.Join(append(errs, fmt.Errorf("loop devices %v still bound to %s", loopsBackedBy(path), path))...)
}

// loopsFreed polls until no loop device is bound to path or wait passes.
func loopsFreed(path string, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for len(loopsBackedBy(path)) > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// mountFS is mount(2) without flags, named for what the callers do.
func mountFS(source, target, fstype, data string) error {
	return unix.Mount(source, target, fstype, 0, data)
}

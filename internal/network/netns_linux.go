package network

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ensureNetNSDir makes NetNSDir a shared mount point, as iproute2 does, so a
// namespace bind-mounted there later is visible in mount namespaces that
// were copied from ours earlier (runtimes that unshare their mounts).
func ensureNetNSDir() error {
	if err := os.MkdirAll(NetNSDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", NetNSDir, err)
	}
	bound := false
	for {
		err := unix.Mount("", NetNSDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		// EINVAL: not a mount point yet. Bind it onto itself once.
		if !errors.Is(err, unix.EINVAL) || bound {
			return fmt.Errorf("make %s a shared mount: %w", NetNSDir, err)
		}
		if err := unix.Mount(NetNSDir, NetNSDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s onto itself: %w", NetNSDir, err)
		}
		bound = true
	}
}

// createNetNS creates a network namespace and pins it with a bind mount at
// path. The namespace is entered only by a dedicated goroutine locked to its
// thread; that thread goes back to the original namespace before it is
// unlocked, and if going back fails it stays locked, so the runtime destroys
// the thread instead of reusing it in the wrong namespace.
func createNetNS(path string) (err error) {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns file %s: %w", path, err)
	}
	_ = f.Close()
	defer func() {
		if err != nil {
			_ = deleteNetNS(path)
		}
	}()

	unshare := func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare netns: %w", err) // still in the original namespace
		}
		return nil
	}
	return onNetNSThread(unshare, func() error {
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind netns to %s: %w", path, err)
		}
		// Sandboxes get IPv4 only: with IPv6 on, the guest would have a
		// link-local route to the host that the IPv4 guard does not see.
		// /proc/sys/net shows the namespace of the thread that opens it.
		return disableIPv6("all", "default")
	})
}

// disableIPv6 turns IPv6 off on the named interfaces (or "all"/"default") of
// the calling thread's namespace. A kernel without IPv6 has nothing to turn
// off.
func disableIPv6(ifaces ...string) error {
	for _, name := range ifaces {
		p := filepath.Join("/proc/sys/net/ipv6/conf", name, "disable_ipv6")
		if err := os.WriteFile(p, []byte("1"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("disable IPv6 on %s: %w", name, err)
		}
	}
	return nil
}

// deleteNetNS unpins the namespace at path and removes the file. The
// namespace itself goes away once no process is left in it. Missing is fine.
func deleteNetNS(path string) error {
	for range 4 { // stacked mounts, should there be any
		err := unix.Unmount(path, unix.MNT_DETACH)
		if err != nil {
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				break
			}
			return fmt.Errorf("unmount netns %s: %w", path, err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns file %s: %w", path, err)
	}
	return nil
}

// inNetNS runs fn on a thread of its own that has entered the namespace at
// path.
func inNetNS(path string, fn func() error) error {
	enter := func() error {
		target, err := netns.GetFromPath(path)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", path, err)
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("enter netns %s: %w", path, err)
		}
		return nil
	}
	return onNetNSThread(enter, fn)
}

// onNetNSThread runs enter, then fn, on a locked thread of their own. enter
// moves the thread into a network namespace and, when it fails, leaves it
// where it was. The thread goes back to its original namespace before it is
// unlocked, and is discarded (left locked, so it dies with the goroutine)
// if it cannot; that failure is joined to fn's error.
func onNetNSThread(enter, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer orig.Close()
		if err := enter(); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = fn()
		if rerr := netns.Set(orig); rerr != nil {
			errc <- errors.Join(err, fmt.Errorf("return to the original netns: %w", rerr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

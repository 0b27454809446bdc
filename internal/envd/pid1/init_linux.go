package pid1

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Mount is one filesystem init makes sure is mounted.
type Mount struct {
	Target string
	FSType string
	Source string
	Flags  uintptr
	Data   string
	// Fallback is tried when the kernel lacks FSType (devtmpfs).
	Fallback *Mount
}

// Mounts lists, in order, what a sandbox needs. Under runc the OCI spec
// mounts most of these already; in a VM the kernel mounts none. /tmp is left
// on the root disk so its files survive a pause to disk like any other.
var Mounts = []Mount{
	{Target: "/proc", FSType: "proc", Source: "proc", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	{Target: "/sys", FSType: "sysfs", Source: "sysfs", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	{
		Target: "/dev", FSType: "devtmpfs", Source: "devtmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755",
		Fallback: &Mount{Target: "/dev", FSType: "tmpfs", Source: "tmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755"},
	},
	// newinstance and ptmxmode=0666 so unprivileged users can open PTYs.
	{Target: "/dev/pts", FSType: "devpts", Source: "devpts", Flags: unix.MS_NOSUID | unix.MS_NOEXEC, Data: "newinstance,ptmxmode=0666,mode=0620,gid=5"},
	{Target: "/dev/shm", FSType: "tmpfs", Source: "shm", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=1777"},
}

// MountMissing mounts every entry of mounts whose target is not yet a mount
// point, re-reading mountinfo after each so the decision is always current.
// It stops at the first failure: a sandbox without /proc or /dev is broken.
func MountMissing(log *slog.Logger, mounts []Mount) error {
	for _, m := range mounts {
		points, err := currentMountPoints()
		if err != nil && m.Target != "/proc" {
			return err
		}
		if points[m.Target] {
			continue
		}
		if err := mountOne(m); err != nil {
			if m.Fallback == nil {
				return err
			}
			log.Warn("mount failed, trying fallback", "target", m.Target, "fstype", m.FSType, "error", err)
			if err := mountOne(*m.Fallback); err != nil {
				return err
			}
			if m.Target == "/dev" {
				populateDev(log)
			}
		}
		log.Debug("mounted", "target", m.Target, "fstype", m.FSType)
		if m.Target == "/dev" {
			linkDev(log)
		}
	}
	return nil
}

func currentMountPoints() (map[string]bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		// No /proc yet: nothing is known to be mounted.
		return map[string]bool{}, fmt.Errorf("open mountinfo: %w", err)
	}
	defer f.Close()
	return MountPoints(f)
}

func mountOne(m Mount) error {
	if err := os.MkdirAll(m.Target, 0o755); err != nil {
		return fmt.Errorf("create mount point %s: %w", m.Target, err)
	}
	if err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", m.FSType, m.Target, err)
	}
	return nil
}

// populateDev creates the device nodes every program expects when /dev had
// to be a plain tmpfs.
func populateDev(log *slog.Logger) {
	nodes := []struct {
		name         string
		major, minor uint32
	}{
		{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
	}
	for _, n := range nodes {
		p := filepath.Join("/dev", n.name)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil && !errors.Is(err, os.ErrExist) {
			log.Warn("create device node", "path", p, "error", err)
		}
	}
}

// linkDev adds the /dev symlinks devtmpfs does not carry.
func linkDev(log *slog.Logger) {
	links := map[string]string{
		"/dev/fd":     "/proc/self/fd",
		"/dev/stdin":  "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1",
		"/dev/stderr": "/proc/self/fd/2",
		"/dev/ptmx":   "pts/ptmx",
	}
	for link, target := range links {
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(target, link); err != nil {
			log.Warn("create /dev link", "link", link, "error", err)
		}
	}
}

// Setup applies cfg's hostname and DNS. Failures are returned; the caller
// decides whether they are fatal.
func Setup(log *slog.Logger, cfg Config) error {
	var errs []error
	if cfg.Hostname != "" {
		// A runtime that gave the sandbox its own UTS namespace has set the
		// name already, and root inside may not (no CAP_SYS_ADMIN): only
		// a different name is set, and /etc/hosts gets the entry either way.
		if cur, err := os.Hostname(); err != nil || cur != cfg.Hostname {
			if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
				errs = append(errs, fmt.Errorf("set hostname %q: %w", cfg.Hostname, err))
			}
		}
		if err := ensureHostsEntry("/etc/hosts", cfg.Hostname); err != nil {
			// Not fatal: only tools that resolve their own name care.
			log.Warn("add hostname to /etc/hosts", "error", err)
		}
	}
	if len(cfg.DNS) > 0 {
		if err := writeFileAtomic("/etc/resolv.conf", ResolvConf(cfg.DNS)); err != nil {
			errs = append(errs, fmt.Errorf("write /etc/resolv.conf: %w", err))
		}
	}
	return errors.Join(errs...)
}

// ensureHostsEntry makes the hostname resolvable, as sudo and others expect.
func ensureHostsEntry(path, hostname string) error {
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		for _, name := range f[min(1, len(f)):] {
			if name == hostname {
				return nil
			}
		}
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	if len(b) == 0 {
		b = []byte("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	}
	b = append(b, []byte("127.0.1.1\t"+hostname+"\n")...)
	return writeFileAtomic(path, b)
}

// writeFileAtomic replaces path in one step; a bind-mounted file (runc may
// mount /etc/resolv.conf) cannot be renamed over, so it falls back to
// rewriting in place.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".wrenn-init"
	if err := os.WriteFile(tmp, data, 0o644); err == nil {
		if err := os.Rename(tmp, path); err == nil {
			return nil
		}
		_ = os.Remove(tmp)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// forwarded are the signals init passes on to envd. SIGKILL and SIGSTOP
// cannot be caught; a runtime stopping the sandbox sends SIGTERM first.
var forwarded = []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2}

// Supervise starts envd, reaps every child that exits (orphans included)
// and forwards termination signals to envd until envd exits; it returns the
// exit status init should leave with.
func Supervise(log *slog.Logger, cfg Config) int {
	sigs := make(chan os.Signal, 32)
	// Before the start, so envd's exit cannot slip past unnoticed.
	signal.Notify(sigs, append([]os.Signal{unix.SIGCHLD}, forwarded...)...)
	defer signal.Stop(sigs)

	cmd := exec.Command(cfg.Envd, cfg.Args...)
	cmd.Env = cfg.Env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// cmd.Wait is never called: the wait4(-1) loop below reaps envd too.
	if err := cmd.Start(); err != nil {
		log.Error("start envd", "path", cfg.Envd, "error", err)
		return 127
	}
	envd := cmd.Process.Pid
	log.Info("envd started", "pid", envd, "path", cfg.Envd)
	code := ForwardAndReap(log, sigs, envd)
	log.Info("envd exited", "status", code)
	return code
}

// ForwardAndReap is a PID 1's loop over sigs (subscribed to SIGCHLD and the
// signals to pass on): it forwards every signal but SIGCHLD to child, reaps
// every process that exits (orphans included), and returns child's exit
// status once child is reaped, or 1 if sigs closes first.
func ForwardAndReap(log *slog.Logger, sigs <-chan os.Signal, child int) int {
	for sig := range sigs {
		if sig != unix.SIGCHLD {
			if err := unix.Kill(child, sig.(syscall.Signal)); err != nil {
				log.Warn("forward signal", "pid", child, "signal", sig.String(), "error", err)
			}
			continue
		}
		// SIGCHLDs coalesce: reap until nothing is left to reap.
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || pid <= 0 {
				break
			}
			if pid == child {
				return ExitCode(ws.Exited(), ws.ExitStatus(), ws.Signaled(), int(ws.Signal()))
			}
		}
	}
	return 1
}

package oci

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/wrenn/wrenn/internal/runtime"
)

// The subset of the OCI runtime specification (config.json, version 1.0.2
// as runc 1.1 speaks it) that a Wrenn sandbox uses. Written here rather than
// imported so the bundle the driver writes is exactly what this file says.

type ociSpec struct {
	Version  string   `json:"ociVersion"`
	Process  ociProc  `json:"process"`
	Root     ociRoot  `json:"root"`
	Hostname string   `json:"hostname,omitempty"`
	Mounts   []ociMnt `json:"mounts"`
	Linux    ociLinux `json:"linux"`
}

type ociProc struct {
	Terminal        bool        `json:"terminal"`
	User            ociUser     `json:"user"`
	Args            []string    `json:"args"`
	Env             []string    `json:"env"`
	Cwd             string      `json:"cwd"`
	Capabilities    ociCaps     `json:"capabilities"`
	Rlimits         []ociRlimit `json:"rlimits"`
	NoNewPrivileges bool        `json:"noNewPrivileges"`
	OOMScoreAdj     *int        `json:"oomScoreAdj,omitempty"`
}

type ociUser struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
}

type ociCaps struct {
	Bounding    []string `json:"bounding"`
	Effective   []string `json:"effective"`
	Permitted   []string `json:"permitted"`
	Inheritable []string `json:"inheritable"`
	Ambient     []string `json:"ambient"`
}

type ociRlimit struct {
	Type string `json:"type"`
	Hard uint64 `json:"hard"`
	Soft uint64 `json:"soft"`
}

type ociRoot struct {
	Path     string `json:"path"`
	Readonly bool   `json:"readonly"`
}

type ociMnt struct {
	Destination string   `json:"destination"`
	Type        string   `json:"type"`
	Source      string   `json:"source"`
	Options     []string `json:"options,omitempty"`
}

type ociLinux struct {
	Namespaces    []ociNS      `json:"namespaces"`
	CgroupsPath   string       `json:"cgroupsPath"`
	Resources     ociResources `json:"resources"`
	MaskedPaths   []string     `json:"maskedPaths"`
	ReadonlyPaths []string     `json:"readonlyPaths"`
	Seccomp       *ociSeccomp  `json:"seccomp,omitempty"`
}

type ociNS struct {
	Type string `json:"type"`
	Path string `json:"path,omitempty"`
}

type ociResources struct {
	Devices []ociDeviceRule `json:"devices"`
	Memory  *ociMemory      `json:"memory,omitempty"`
	CPU     *ociCPU         `json:"cpu,omitempty"`
	Pids    *ociPids        `json:"pids,omitempty"`
}

type ociDeviceRule struct {
	Allow  bool   `json:"allow"`
	Access string `json:"access"`
}

type ociMemory struct {
	Limit int64 `json:"limit"`
	Swap  int64 `json:"swap"`
}

type ociCPU struct {
	Quota  int64  `json:"quota"`
	Period uint64 `json:"period"`
}

type ociPids struct {
	Limit int64 `json:"limit"`
}

// Capabilities are the sandbox init's capabilities: Docker's default set.
// Root inside keeps what installing packages, sudo, chown and binding low
// ports need, but not SYS_ADMIN (mounts, namespaces), NET_ADMIN (routes,
// firewall of the sandbox's own namespace), SYS_MODULE, SYS_PTRACE, SYS_TIME
// and the like, which reach the shared kernel.
var Capabilities = []string{
	"CAP_AUDIT_WRITE",
	"CAP_CHOWN",
	"CAP_DAC_OVERRIDE",
	"CAP_FOWNER",
	"CAP_FSETID",
	"CAP_KILL",
	"CAP_MKNOD",
	"CAP_NET_BIND_SERVICE",
	"CAP_NET_RAW",
	"CAP_SETFCAP",
	"CAP_SETGID",
	"CAP_SETPCAP",
	"CAP_SETUID",
	"CAP_SYS_CHROOT",
}

// maskedPaths and readonlyPaths are runc's defaults: kernel interfaces that
// leak host information or let root inside change the host.
var (
	maskedPaths = []string{
		"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
	}
	readonlyPaths = []string{
		"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)

// defaultPath is the init's PATH when the spec's Env sets none; runc
// resolves a relative Args[0] with it.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

const (
	cpuPeriod = 100000 // µs; the quota is VCPUs whole periods
	// DefaultNofile is the sandbox's open-file limit where the host allows it.
	DefaultNofile = 1048576
)

// cgroupPath is the sandbox's cgroup in every hierarchy. runc's cgroupfs
// driver creates it and removes the leaf on delete; the parent stays.
func cgroupPath(parent, id string) string {
	return strings.TrimSuffix(parent, "/") + "/" + id
}

// buildSpec turns a runtime.Spec into the bundle's config.json; nofile is
// the sandbox's RLIMIT_NOFILE.
func buildSpec(s runtime.Spec, cgroupParent string, nofile uint64) (ociSpec, error) {
	if len(s.Args) == 0 {
		return ociSpec{}, fmt.Errorf("sandbox %s has no init command", s.ID)
	}
	env := slices.Clone(s.Env)
	if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "PATH=") }) {
		env = append(env, defaultPath)
	}
	hostname := s.Hostname
	if hostname == "" {
		hostname = s.ID
	}
	caps := slices.Clone(Capabilities)
	spec := ociSpec{
		Version: "1.0.2",
		Process: ociProc{
			Terminal: false,
			User:     ociUser{UID: 0, GID: 0},
			Args:     slices.Clone(s.Args),
			Env:      env,
			Cwd:      "/",
			Capabilities: ociCaps{
				Bounding:    caps,
				Effective:   caps,
				Permitted:   caps,
				Inheritable: []string{},
				Ambient:     []string{},
			},
			Rlimits: []ociRlimit{{Type: "RLIMIT_NOFILE", Hard: nofile, Soft: nofile}},
			// sudo inside must be able to gain root from wrenn-user.
			NoNewPrivileges: false,
		},
		Root:     ociRoot{Path: s.RootFS, Readonly: false},
		Hostname: hostname,
		Mounts: []ociMnt{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			// ptmxmode=0666: without it /dev/pts/ptmx is mode 000 and envd
			// cannot open PTYs with these capabilities.
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: ociLinux{
			Namespaces: []ociNS{
				{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"},
				// An empty path gives the sandbox a fresh namespace with only
				// loopback; the agent always passes a wired one.
				{Type: "network", Path: s.NetNSPath},
			},
			CgroupsPath: cgroupPath(cgroupParent, s.ID),
			Resources: ociResources{
				// Deny every device node; runc adds its default allow list
				// (null, zero, full, random, urandom, tty, ptmx, pts) and
				// creates those nodes in /dev.
				Devices: []ociDeviceRule{{Allow: false, Access: "rwm"}},
			},
			MaskedPaths:   slices.Clone(maskedPaths),
			ReadonlyPaths: slices.Clone(readonlyPaths),
		},
	}
	if s.MemoryMB > 0 {
		// Swap is memory+swap on v1 (runc converts it for v2): equal to the
		// limit means no swap.
		limit := int64(s.MemoryMB) * 1024 * 1024
		spec.Linux.Resources.Memory = &ociMemory{Limit: limit, Swap: limit}
	}
	if s.VCPUs > 0 {
		spec.Linux.Resources.CPU = &ociCPU{Quota: int64(s.VCPUs) * cpuPeriod, Period: cpuPeriod}
	}
	if s.Pids > 0 {
		spec.Linux.Resources.Pids = &ociPids{Limit: s.Pids}
	}
	return spec, nil
}

// HostPids is the pids limit the sandbox's host cgroup gets for a workload
// limit of pids (0, no limit, stays 0): pids plus the runtime's own tasks,
// or, where the sandbox's kernel enforces pids itself (Config.PidsPerTask),
// the host tasks that many guest tasks may cost, but never more than
// max(pids, Config.HostPidsCap) of them: the host pays at most what a runc
// sandbox of the same or a HostPidsCap limit would.
func (d *Driver) HostPids(pids int64) int64 {
	switch {
	case pids <= 0:
		return 0
	case d.cfg.PidsPerTask > 0:
		host := pids * d.cfg.PidsPerTask
		if d.cfg.HostPidsCap > 0 {
			host = min(host, max(pids, d.cfg.HostPidsCap))
		}
		return host + d.cfg.PidsOverhead
	}
	return pids + d.cfg.PidsOverhead
}

// GuestPids is the task limit the sandbox's own kernel enforces
// (RLIMIT_NPROC) for a Spec.Pids of pids, where it enforces one
// (PidsPerTask set), else 0: pids, or fewer where the host cgroup's capped
// room (HostPids) holds fewer at PidsPerTask each, so the guest's limit is
// always reached before the host's, which would stop the whole sandbox.
func (d *Driver) GuestPids(pids int64) int64 {
	if pids <= 0 || d.cfg.PidsPerTask <= 0 {
		return 0
	}
	room := d.HostPids(pids) - d.cfg.PidsOverhead
	return max(1, min(pids, room/d.cfg.PidsPerTask))
}

// InitOOMScoreAdj is the sandbox init's oom_score_adj on runtimes whose
// sandboxes run on the host kernel (runc): wrenn-init and envd, which
// inherits it, are the OOM killer's last choice when the sandbox reaches its
// memory limit; envd raises what it starts to +100. Not -1000, which exempts
// a process: what a command forks before envd has raised it inherits the
// value and must stay killable, or a hog forked that early could never be
// stopped. Only the runtime can set it: lowering oom_score_adj needs
// CAP_SYS_RESOURCE, which the sandbox lacks (and where the agent lacks it
// too, as on some container hosts, the spec asks for nothing, or runc would
// fail every create). gVisor gets none: there it would shield the Sentry,
// which holds the guest's memory, from the host's OOM killer.
const InitOOMScoreAdj = -999

// sandboxSpec is buildSpec with the driver's limits: the runtime's headroom
// on the host cgroup's memory and pids (limits of 0 mean none and stay
// none), and the pids limit as RLIMIT_NPROC inside where the runtime's own
// kernel enforces it. gVisor counts RLIMIT_NPROC per user over every task of
// the sandbox and applies it to root too (the sandbox has no
// CAP_SYS_RESOURCE or CAP_SYS_ADMIN), so a fork bomb fails with EAGAIN at
// Spec.Pids tasks of its user while the host cgroup, sized by HostPids, is
// never reached; reaching it would kill the Sentry and with it the whole
// sandbox, envd included.
//
// With an OOM guard (Config.OOMGuard) and a memory limit, the init runs
// under the guard, bind-mounted read-only into the sandbox's /dev tmpfs (so
// nothing is added to the root disk), and the host cgroup gets
// OOMHeadroomMB more memory so the guard kills first.
func (d *Driver) sandboxSpec(s runtime.Spec) (ociSpec, error) {
	nproc := uint64(d.GuestPids(s.Pids))
	s.Pids = d.HostPids(s.Pids)
	guardLimit := int64(0)
	if s.MemoryMB > 0 {
		if d.cfg.OOMGuard != "" {
			guardLimit = int64(s.MemoryMB) << 20
			s.MemoryMB += d.cfg.OOMHeadroomMB
		}
		s.MemoryMB += d.cfg.MemoryOverheadMB
	}
	spec, err := buildSpec(s, d.cfg.CgroupParent, d.nofile)
	if err != nil {
		return ociSpec{}, err
	}
	if nproc > 0 {
		spec.Process.Rlimits = append(spec.Process.Rlimits, ociRlimit{Type: "RLIMIT_NPROC", Hard: nproc, Soft: nproc})
	}
	if d.delegates() {
		d.delegateCgroups(&spec, s.ID)
	}
	if d.cfg.Name != RunscName {
		// gVisor's Sentry answers the sandbox's syscalls itself and runs
		// under a filter of its own; on runc they reach the host kernel.
		spec.Linux.Seccomp = sandboxSeccomp()
	}
	if d.cfg.Name != RunscName && canLowerOOMScore() {
		adj := InitOOMScoreAdj
		spec.Process.OOMScoreAdj = &adj
	}
	if guardLimit > 0 {
		// The runtime can no longer tell that the init is missing (the guard
		// starts and only then fails to run it), so the driver checks.
		if err := checkExecutable(s.RootFS, spec.Process.Args[0], spec.Process.Env); err != nil {
			return ociSpec{}, fmt.Errorf("init: %w", err)
		}
		spec.Mounts = append(spec.Mounts, ociMnt{
			Destination: guardPath, Type: "bind", Source: d.cfg.OOMGuard,
			Options: []string{"bind", "ro", "nosuid", "nodev"},
		})
		spec.Process.Args = append([]string{guardPath, "-limit", strconv.FormatInt(guardLimit, 10), "--"}, spec.Process.Args...)
	}
	return spec, nil
}

// guardPath is where the OOM guard appears inside a sandbox: in the /dev
// tmpfs, so its mount point never lands on the sandbox's disk.
const guardPath = "/dev/.wrenn-oomguard"

// checkExecutable reports whether name, the init's argv[0], is an
// executable file in root, looked up the way the guard's exec will: a name
// without a slash along the spec's PATH.
func checkExecutable(root, name string, env []string) error {
	candidates := []string{name}
	if !strings.Contains(name, "/") {
		candidates = nil
		for _, kv := range env {
			if dirs, ok := strings.CutPrefix(kv, "PATH="); ok {
				for _, dir := range filepath.SplitList(dirs) {
					candidates = append(candidates, path.Join(dir, name))
				}
			}
		}
	}
	for _, c := range candidates {
		host, err := resolveInRoot(root, c)
		if err != nil {
			continue
		}
		if fi, err := os.Stat(host); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return nil
		}
	}
	return fmt.Errorf("%q is not an executable file in the root filesystem", name)
}

// resolveInRoot turns p, a path as the sandbox sees it, into the host path
// of what it names in root: symlinks are followed, absolute ones against
// root, and ".." never climbs above root. The last component is resolved
// too, so the result is never a symlink.
func resolveInRoot(root, p string) (string, error) {
	rest := strings.Split(p, "/")
	cur := "/"
	for links := 0; len(rest) > 0; {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, c)
		host := filepath.Join(root, next)
		fi, err := os.Lstat(host)
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		if links++; links > 40 {
			return "", fmt.Errorf("%s: too many levels of symbolic links", p)
		}
		target, err := os.Readlink(host)
		if err != nil {
			return "", err
		}
		if path.IsAbs(target) {
			cur = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return filepath.Join(root, cur), nil
}

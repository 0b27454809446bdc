package oci

import (
	goruntime "runtime"

	"golang.org/x/sys/unix"
)

// The OCI seccomp section (runtime-spec config-linux.md, "Seccomp"), as
// much of it as the sandbox profile uses.

type ociSeccomp struct {
	DefaultAction string           `json:"defaultAction"`
	Architectures []string         `json:"architectures,omitempty"`
	Syscalls      []ociSyscallRule `json:"syscalls"`
}

type ociSyscallRule struct {
	Names    []string     `json:"names"`
	Action   string       `json:"action"`
	ErrnoRet *uint        `json:"errnoRet,omitempty"`
	Args     []ociSyscArg `json:"args,omitempty"`
}

type ociSyscArg struct {
	Index    uint   `json:"index"`
	Value    uint64 `json:"value"`
	ValueTwo uint64 `json:"valueTwo"`
	Op       string `json:"op"`
}

// deniedSyscalls fail with EPERM in a runc sandbox. The capability set
// already keeps root inside from most of what they do; the filter closes
// what capabilities do not cover and cuts the kernel's attack surface:
//   - the kernel keyring, which is not namespaced;
//   - eBPF, perf events and userfaultfd, the usual ways in for kernel
//     exploits, and io_uring, which bypasses syscall filtering;
//   - modules, kexec, swap, reboot, accounting, quotas and port I/O;
//   - the mount API and file handles, which need capabilities the sandbox
//     lacks but sit behind a user namespace's (see newUserNS);
//   - setns, which joins namespaces the sandbox was not given.
var deniedSyscalls = []string{
	"add_key", "keyctl", "request_key",
	"bpf", "perf_event_open", "userfaultfd",
	"io_uring_setup", "io_uring_enter", "io_uring_register",
	"init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
	"swapon", "swapoff", "reboot", "acct", "quotactl", "quotactl_fd", "iopl", "ioperm",
	"lookup_dcookie", "nfsservctl",
	"fsopen", "fsconfig", "fsmount", "fspick", "open_tree", "move_mount", "mount_setattr",
	"open_by_handle_at", "name_to_handle_at",
	"setns",
}

// newUserNS is CLONE_NEWUSER. A user namespace needs no capability, and in
// one the sandbox's root would hold CAP_SYS_ADMIN over it: mounts, new
// network stacks and the rest of the kernel code that only trusted users
// used to reach. clone and unshare with the flag fail with EPERM; clone3,
// whose flags sit in memory a filter cannot read, fails with ENOSYS, on
// which the C library falls back to clone.
const newUserNS = unix.CLONE_NEWUSER

// sandboxSeccomp is the seccomp profile of a runc sandbox: everything is
// allowed except deniedSyscalls and new user namespaces. An allow list
// (Docker's) breaks programs on every syscall the kernel adds; a deny list
// keeps them working and shuts the doors that matter.
func sandboxSeccomp() *ociSeccomp {
	eperm, enosys := uint(unix.EPERM), uint(unix.ENOSYS)
	withUserNS := []ociSyscArg{{Index: 0, Value: newUserNS, ValueTwo: newUserNS, Op: "SCMP_CMP_MASKED_EQ"}}
	return &ociSeccomp{
		DefaultAction: "SCMP_ACT_ALLOW",
		Architectures: seccompArchitectures(),
		Syscalls: []ociSyscallRule{
			{Names: deniedSyscalls, Action: "SCMP_ACT_ERRNO", ErrnoRet: &eperm},
			{Names: []string{"clone", "unshare"}, Action: "SCMP_ACT_ERRNO", ErrnoRet: &eperm, Args: withUserNS},
			{Names: []string{"clone3"}, Action: "SCMP_ACT_ERRNO", ErrnoRet: &enosys},
		},
	}
}

// seccompArchitectures are the syscall ABIs a sandbox may use on this
// host, each filtered alike: a 32-bit program's syscalls go through the
// same rules. Any other ABI is refused by the filter outright.
func seccompArchitectures() []string {
	switch goruntime.GOARCH {
	case "amd64":
		return []string{"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"}
	case "arm64":
		return []string{"SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"}
	}
	return nil // the native one only
}

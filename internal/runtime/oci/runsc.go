package oci

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/wrenn/wrenn/internal/runtime"
)

// RunscName is gVisor's runtime binary and the WRENN_RUNTIME value that
// selects it.
const RunscName = "runsc"

// RunscPidsOverhead is the pids headroom a gVisor sandbox needs on top of
// its workload: the Sentry and the gofer run in the sandbox's cgroup, and a
// bare sandbox already holds about 31 host tasks there (60 with the ptrace
// stubs of a running shell), so a limit of Spec.Pids alone would leave the
// workload almost nothing.
const RunscPidsOverhead = 128

// RunscPidsPerTask is the host tasks the host cgroup allows per guest task
// of a gVisor sandbox, whose pids limit gVisor enforces itself as
// RLIMIT_NPROC (its cgroupfs on this build has no pids controller). On the
// ptrace platform every guest process is a host stub process with a thread
// for each Sentry thread that has run it, and the Sentry grows a thread per
// guest task running at once, so the cost rises with the number of tasks:
// a fork bomb held at 64 guest tasks peaked at 680 host tasks here (10.6
// each) and one held at 256 at 6262 (24 each). 24 covers both; where the
// host cgroup's capped room holds fewer guest tasks than Spec.Pids at this
// cost, the guest's limit is cut to what it holds (GuestPids), so a fork
// bomb always stops inside: the agent's 4096 gives 170 under gVisor.
const RunscPidsPerTask = 24

// RunscHostPidsCap bounds the host tasks RunscPidsPerTask grants (see
// HostPids): a gVisor sandbox's host cgroup allows at most max(Spec.Pids,
// 4096) of them, so a large Spec.Pids (the agent's 4096) costs the host no
// more than a runc sandbox of that limit would, on hosts whose pid_max is
// 32768. Such a sandbox's fork bomb stops at the host limit, with the
// sandbox, rather than inside.
const RunscHostPidsCap = 4096

// RunscMemoryOverheadMB is the memory headroom of a gVisor sandbox: the
// Sentry's own resident memory (about 40 MB) is charged to the sandbox's
// memory cgroup, and the guest's memory too (as the Sentry's memory file).
// gVisor has no OOM killer of its own (gVisor issue 1967): its cgroupfs
// memory controller only reports usage, and the total memory it shows the
// guest (the host limit) is not enforced, so a guest that goes past the
// limit meets the host's memory cgroup, whose OOM kill of any of the
// sandbox's host tasks (Sentry, gofer or a ptrace stub) stops the whole
// sandbox. The headroom keeps the Sentry from dying before the workload has
// used what it asked for; the OOM guard (RunscOOMGuardName) keeps a process
// that goes over from taking the sandbox with it.
const RunscMemoryOverheadMB = 64

// RunscOOMHeadroomMB is how far the guest of a guarded gVisor sandbox may
// go past its limit before the host cgroup stops the sandbox. The guard
// reads the guest's memory use every 10 ms above half the limit and every
// 100 ms below it (each read costs about a millisecond of CPU under
// ptrace), and Python filling a 512 MB bytearray grew by 1.1 GB a second
// here, so a sandbox at rest can be 110 MB past its limit when the guard
// next looks. One system call that fills more than the headroom at once
// (a read of 256 MB into a fresh buffer in a 48 MB sandbox) completes before
// gVisor delivers the guard's SIGKILL, so it still reaches the host limit,
// which holds, and stops the whole sandbox.
const RunscOOMHeadroomMB = 128

// RunscOOMGuardName is the file name of the oomguard binary (package
// oomguard, built static) that Runsc looks for beside the running
// executable and then in PATH.
const RunscOOMGuardName = "wrenn-oomguard"

// FindOOMGuard returns the path of RunscOOMGuardName beside the running
// executable or in PATH, "" if there is none.
func FindOOMGuard() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), RunscOOMGuardName)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	if p, err := exec.LookPath(RunscOOMGuardName); err == nil {
		return p
	}
	return ""
}

// RunscHideNetSysctls is the argv prefix every runsc command runs under on
// kernels where Debian's runsc build refuses networked sandboxes ("cannot run
// with network enabled in root network namespace", gVisor issue 10704, fixed
// upstream only in 2024): a private mount namespace in which /proc/sys/net is
// covered by an empty read-only tmpfs. The namespace is the command's own,
// so the host's mounts are untouched, and the sandbox process runsc leaves
// behind keeps it (nothing else in the sandbox reads the host's sysctls).
// The script takes runsc's argv as positional parameters, so nothing of a
// sandbox's spec is ever interpreted by the shell.
var RunscHideNetSysctls = []string{
	"unshare", "-m", "--propagation", "private",
	"sh", "-c", `mount -t tmpfs -o size=4k,ro hide /proc/sys/net && exec "$@"`, "sh",
}

// Runsc returns the Config that runs sandboxes under gVisor: runsc with the
// ptrace platform (the only one that works without KVM or a nested-virt
// capable kernel), the /proc/sys/net workaround, its own state root, the
// pids limit enforced inside (RunscPidsPerTask), the OOM guard FindOOMGuard
// finds with RunscOOMHeadroomMB, and the pids and memory headroom of
// RunscPidsOverhead and RunscMemoryOverheadMB. Without a guard a process
// that goes over the memory limit stops the whole sandbox; Runsc warns.
// Stats come from the sandbox's host cgroup, as for runc: cheap (no runsc
// process per sample) and what the host pays, so they include the Sentry's
// and gofer's tasks and memory. Pause and resume are `runsc pause` and
// `runsc resume`, which stop the Sentry's tasks in memory: checkpoint on this
// build refuses live TCP endpoints and restores without the network
// interface, so it cannot back a pause that keeps the sandbox reachable.
func Runsc(root string, logger *slog.Logger) Config {
	guard := FindOOMGuard()
	if guard == "" && logger != nil {
		logger.Warn("no " + RunscOOMGuardName + " beside this executable or in PATH: a gVisor sandbox's process that goes over its memory limit stops the whole sandbox (build it with make)")
	}
	return Config{
		Binary:           RunscName,
		Name:             RunscName,
		Root:             root,
		GlobalArgs:       []string{"--platform=ptrace"},
		Wrap:             append([]string(nil), RunscHideNetSysctls...),
		PidsOverhead:     RunscPidsOverhead,
		PidsPerTask:      RunscPidsPerTask,
		HostPidsCap:      RunscHostPidsCap,
		OOMGuard:         guard,
		OOMHeadroomMB:    RunscOOMHeadroomMB,
		MemoryOverheadMB: RunscMemoryOverheadMB,
		ResumeBeforeKill: true,
		Logger:           logger,
	}
}

// wrapperAvailable checks the tools a Config's Wrap needs: its program and,
// for RunscHideNetSysctls, the shell and mount it runs.
func wrapperAvailable(binary string) error {
	need := []string{"unshare", "sh", "mount"}
	for _, tool := range need {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%w: %s needs %s for its network workaround (apt-get install util-linux mount): %w",
				runtime.ErrUnavailable, binary, tool, err)
		}
	}
	return nil
}

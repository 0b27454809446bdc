package oci

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// capSysResource is CAP_SYS_RESOURCE's bit in /proc/self/status CapEff.
const capSysResource = 24

// grantableNofile is the highest RLIMIT_NOFILE the runtime (our child) can
// give a sandbox: want, unless this process lacks CAP_SYS_RESOURCE (some
// container hosts drop it), in which case no child can raise the hard limit
// above ours and runc would fail every create with EPERM.
func grantableNofile(want uint64) uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Max >= want {
		return want
	}
	if hasCap(capSysResource) {
		return want
	}
	return rl.Max
}

func hasCap(bit uint) bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return true // unknown: assume the usual root
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return true
			}
			return caps&(1<<bit) != 0
		}
	}
	return true
}

// canLowerOOMScore reports whether the runtime (our child) may give a
// sandbox's init a negative oom_score_adj, which needs CAP_SYS_RESOURCE.
func canLowerOOMScore() bool { return hasCap(capSysResource) }

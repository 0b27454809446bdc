package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/agent"
)

// hostResources is what a sandbox could leave behind on the host.
type hostResources struct {
	Netns     []string // entries of /var/run/netns
	Links     []string // network interfaces
	Mounts    []string // mount points under the stack's directory
	Loops     []string // loop devices backed by files under it
	Cgroups   []string // wrenn cgroups in any hierarchy
	Processes []string // processes in a wrenn cgroup
	Firewall  []string // iptables rules (nat and filter)
}

func snapshotResources(t testing.TB, dir string) hostResources {
	t.Helper()
	var r hostResources
	// Other stacks and other packages' tests run at the same time and make
	// namespaces, links and rules of their own under other names: look only
	// at this stack's agent's, named after its directory.
	names := agent.ResourceNames(dir)
	r.Netns = withPrefix(dirNames("/var/run/netns"), names.Prefix+"-sb-")
	r.Links = withPrefix(dirNames("/sys/class/net"), names.IfPrefix)
	if f, err := os.Open("/proc/self/mountinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if fields := strings.Fields(s.Text()); len(fields) > 4 && strings.HasPrefix(fields[4], dir) {
				r.Mounts = append(r.Mounts, fields[4])
			}
		}
		f.Close()
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, l := range loops {
		if b, err := os.ReadFile(l); err == nil && strings.HasPrefix(string(b), dir) {
			r.Loops = append(r.Loops, strings.TrimSpace(string(b)))
		}
	}
	cg, _ := filepath.Glob("/sys/fs/cgroup/*/wrenn/*")
	cg2, _ := filepath.Glob("/sys/fs/cgroup/wrenn/*")
	for _, c := range append(cg, cg2...) {
		if fi, err := os.Stat(c); err == nil && fi.IsDir() {
			r.Cgroups = append(r.Cgroups, c)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cgroup")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if i := strings.Index(line, "/wrenn/sb-"); i >= 0 {
				r.Processes = append(r.Processes, filepath.Dir(p)+" in "+line[i:])
				break
			}
		}
	}
	for _, table := range []string{"nat", "filter"} {
		out, err := exec.Command("iptables-save", "-t", table).Output()
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "-A") && (strings.Contains(line, names.Prefix) || strings.Contains(line, strings.ToUpper(names.Prefix)) || strings.Contains(line, " "+names.IfPrefix)) {
				r.Firewall = append(r.Firewall, table+": "+line)
			}
		}
	}
	for _, l := range [][]string{r.Netns, r.Links, r.Mounts, r.Loops, r.Cgroups, r.Processes, r.Firewall} {
		sort.Strings(l)
	}
	return r
}

// ours keeps the entries that name one of the sandboxes.
func ours(l []string, sandboxIDs ...string) []string {
	var out []string
	for _, x := range l {
		for _, id := range sandboxIDs {
			if strings.Contains(x, id) {
				out = append(out, x)
				break
			}
		}
	}
	return out
}

func withPrefix(names []string, prefix string) []string {
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

func dirNames(dir string) []string {
	es, _ := os.ReadDir(dir)
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// settledResources snapshots the host once the given sandboxes' processes
// are gone. A destroyed sandbox's init can linger for a moment as a zombie
// of the host's PID 1 (runc's init is re-parented there), holding nothing but
// its pid; it is waited for here, for at most 5 s, and reported after that.
func settledResources(t testing.TB, dir string, sandboxIDs ...string) hostResources {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := snapshotResources(t, dir)
		if len(ours(r.Processes, sandboxIDs...)) == 0 || time.Now().After(deadline) {
			return r
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// assertNoLeaks fails for every resource present now that was not present
// in before. Namespaces, cgroups, processes and rules are named after their
// sandbox, so for those only the given sandboxes' count: another stack may
// run on the same machine at the same time.
func assertNoLeaks(t testing.TB, before, after hostResources, sandboxIDs ...string) {
	t.Helper()
	check := func(what string, b, a []string) {
		had := map[string]bool{}
		for _, x := range b {
			had[x] = true
		}
		for _, x := range a {
			if !had[x] {
				t.Errorf("leaked %s: %s", what, x)
			}
		}
	}
	before.Netns, after.Netns = ours(before.Netns, sandboxIDs...), ours(after.Netns, sandboxIDs...)
	before.Cgroups, after.Cgroups = ours(before.Cgroups, sandboxIDs...), ours(after.Cgroups, sandboxIDs...)
	before.Processes, after.Processes = ours(before.Processes, sandboxIDs...), ours(after.Processes, sandboxIDs...)
	check("network namespace", before.Netns, after.Netns)
	check("network interface", before.Links, after.Links)
	check("mount", before.Mounts, after.Mounts)
	check("loop device backing", before.Loops, after.Loops)
	check("cgroup", before.Cgroups, after.Cgroups)
	check("process", before.Processes, after.Processes)
	check("firewall rule", before.Firewall, after.Firewall)
}

// stackCIDR reserves a /24 of 10.89.0.0/16 for one stack's agent until the
// test ends, so stacks of this and other test processes running at once get
// disjoint sandbox ranges (an agent refuses a range another one uses). The
// reservation is an exclusive lock on a file per /24, released by the
// kernel if the test process dies.
func stackCIDR(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(os.TempDir(), "wrenn-e2e-cidr")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for n := range 256 {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%d.lock", n)), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		t.Cleanup(func() { f.Close() })
		return fmt.Sprintf("10.89.%d.0/24", n)
	}
	t.Fatal("all 256 sandbox ranges of 10.89.0.0/16 are reserved by running stacks")
	return ""
}

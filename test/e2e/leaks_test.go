package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
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
	// Other packages' tests run at the same time and make namespaces, links
	// and rules of their own under other prefixes: look only at the agent's.
	r.Netns = withPrefix(dirNames("/var/run/netns"), "wrenn-sb-")
	r.Links = withPrefix(dirNames("/sys/class/net"), "wv")
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
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), "/wrenn/sb-") {
			r.Processes = append(r.Processes, filepath.Dir(p))
		}
	}
	for _, table := range []string{"nat", "filter"} {
		out, err := exec.Command("iptables-save", "-t", table).Output()
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "-A") && (strings.Contains(line, "wrenn") || strings.Contains(line, "WRENN") || strings.Contains(line, " wv")) {
				r.Firewall = append(r.Firewall, table+": "+line)
			}
		}
	}
	for _, l := range [][]string{r.Netns, r.Links, r.Mounts, r.Loops, r.Cgroups, r.Processes, r.Firewall} {
		sort.Strings(l)
	}
	return r
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

// assertNoLeaks fails for every resource present now that was not present
// in before.
func assertNoLeaks(t testing.TB, before, after hostResources) {
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
	check("network namespace", before.Netns, after.Netns)
	check("network interface", before.Links, after.Links)
	check("mount", before.Mounts, after.Mounts)
	check("loop device backing", before.Loops, after.Loops)
	check("cgroup", before.Cgroups, after.Cgroups)
	check("process", before.Processes, after.Processes)
	check("firewall rule", before.Firewall, after.Firewall)
}

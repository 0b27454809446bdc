// Package cgroup puts the processes envd starts into a cgroup of their own,
// beside envd's, so the sandbox's owner (or envd later) can account, limit
// and kill user workloads without touching envd.
//
// Inside a runc sandbox /sys/fs/cgroup is often mounted read-only; then
// Create fails and envd runs its children in its own cgroup, relying on
// oom_score_adj alone. Both cgroup v2 and the v1 memory, pids and cpu
// hierarchies are handled.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// V1Controllers are the v1 hierarchies a Group spans: those that can keep a
// runaway process from starving envd.
var V1Controllers = []string{"memory", "pids", "cpu"}

// Layout says where a process's cgroups are: the mount root of the cgroup
// filesystems and, per hierarchy, the group's path inside it.
type Layout struct {
	// Root is where the hierarchies are mounted (normally /sys/fs/cgroup).
	Root string
	// V2 is true when Root itself is a cgroup2 mount (unified hierarchy).
	V2 bool
	// Paths maps a v1 controller to the group's path in its hierarchy; for
	// v2 the single entry has the key "".
	Paths map[string]string
}

// Self returns the Layout of the calling process under root, from
// /proc/self/cgroup.
func Self(root string) (Layout, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return Layout{}, fmt.Errorf("read own cgroups: %w", err)
	}
	defer f.Close()
	_, statErr := os.Stat(filepath.Join(root, "cgroup.controllers"))
	return ParseProcCgroup(f, root, statErr == nil)
}

// ParseProcCgroup reads the text of /proc/<pid>/cgroup. With v2 it keeps the
// unified line only; otherwise the lines of V1Controllers.
func ParseProcCgroup(r io.Reader, root string, v2 bool) (Layout, error) {
	l := Layout{Root: root, V2: v2, Paths: map[string]string{}}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		p := parts[2]
		if !strings.HasPrefix(p, "/") || strings.Contains(p, "/../") || strings.HasSuffix(p, "/..") {
			return Layout{}, fmt.Errorf("cgroup path %q is not absolute and clean", p)
		}
		switch {
		case v2 && parts[0] == "0" && parts[1] == "":
			l.Paths[""] = p
		case !v2:
			for _, c := range strings.Split(parts[1], ",") {
				for _, want := range V1Controllers {
					if c == want {
						l.Paths[c] = p
					}
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Layout{}, fmt.Errorf("read cgroup list: %w", err)
	}
	if len(l.Paths) == 0 {
		return Layout{}, errors.New("no usable cgroup hierarchy in the cgroup list")
	}
	return l, nil
}

// Group is one cgroup (v2) or a same-named cgroup in each v1 hierarchy.
type Group struct {
	dirs    []string
	created []string // the dirs this Group made, removed by Remove
}

// Create makes (or reuses, after an envd restart) the child group name under
// each of l's groups. On any failure it removes what it made and returns
// the error; callers then run without a separate group.
func (l Layout) Create(name string) (*Group, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return nil, fmt.Errorf("cgroup name %q is not one path element", name)
	}
	g := &Group{}
	for _, ctrl := range slices.Sorted(maps.Keys(l.Paths)) {
		dir := filepath.Join(l.Root, ctrl, path.Clean(l.Paths[ctrl]), name)
		err := os.Mkdir(dir, 0o755)
		switch {
		case err == nil:
			g.created = append(g.created, dir)
		case errors.Is(err, os.ErrExist):
		default:
			_ = g.Remove()
			return nil, fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		g.dirs = append(g.dirs, dir)
		// Creating a directory on a writable cgroupfs does not prove we may
		// move processes into it (delegation); check that it is writable.
		if err := unixAccessW(filepath.Join(dir, "cgroup.procs")); err != nil {
			_ = g.Remove()
			return nil, fmt.Errorf("cgroup %s: %w", dir, err)
		}
	}
	return g, nil
}

// Dirs returns the group's directories, one per hierarchy.
func (g *Group) Dirs() []string { return append([]string(nil), g.dirs...) }

// Add moves process pid (the whole thread group) into the group. Children it
// forks afterwards are born there.
func (g *Group) Add(pid int) error {
	for _, dir := range g.dirs {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("move process %d into cgroup %s: %w", pid, dir, err)
		}
	}
	return nil
}

// Remove deletes the directories Create made; it fails (and keeps them)
// while processes are still in them.
func (g *Group) Remove() error {
	var errs []error
	var kept []string
	for _, dir := range g.created {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
			kept = append(kept, dir)
		}
	}
	g.created = kept
	return errors.Join(errs...)
}

// unlimitedV1 is where the v1 memory controller's "no limit" starts: it
// prints the largest page-aligned int64.
const unlimitedV1 = 1 << 62

// LimitMemory caps the memory of l's child group name at l's own limit
// less reserve(limit), so that a runaway user process meets the child's
// limit, and the OOM killer of the child, which considers only the child's
// processes, before the sandbox's: envd and wrenn-init keep reserve(limit)
// to themselves. It returns the child's new limit, or 0 when l has no limit
// to divide. Only the v1 memory controller: on v2 a cgroup that holds
// processes (envd's) cannot enable controllers for its children.
func (l Layout) LimitMemory(name string, reserve func(limit uint64) uint64) (uint64, error) {
	p, ok := l.Paths["memory"]
	if l.V2 || !ok {
		return 0, nil
	}
	parent := filepath.Join(l.Root, "memory", path.Clean(p))
	raw, err := os.ReadFile(filepath.Join(parent, "memory.limit_in_bytes"))
	if err != nil {
		return 0, fmt.Errorf("read the memory limit of %s: %w", parent, err)
	}
	limit, err := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("memory limit %q of %s: %w", strings.TrimSpace(string(raw)), parent, err)
	}
	if limit >= unlimitedV1 {
		return 0, nil
	}
	keep := reserve(limit)
	if keep >= limit {
		return 0, fmt.Errorf("memory limit %d of %s leaves nothing after a reserve of %d", limit, parent, keep)
	}
	child := filepath.Join(parent, name, "memory.limit_in_bytes")
	if err := os.WriteFile(child, []byte(strconv.FormatUint(limit-keep, 10)), 0); err != nil {
		return 0, fmt.Errorf("limit %s: %w", child, err)
	}
	return limit - keep, nil
}

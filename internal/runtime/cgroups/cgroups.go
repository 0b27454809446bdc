// Package cgroups reads and removes the cgroups an OCI runtime creates for a
// sandbox, on cgroup v1, v2 and the hybrid layout (v1 controllers plus an
// empty v2 tree under unified/). The runtime itself (runc) writes the limits;
// this package only measures a sandbox and makes sure nothing of it is left
// in any hierarchy after it is gone.
package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNotExist means the sandbox has no cgroup (it never started or is gone).
var ErrNotExist = errors.New("cgroup does not exist")

// Mode says which cgroup layout the host uses.
type Mode int

const (
	// V1 is the legacy layout: one hierarchy per controller (or group of
	// controllers), possibly with an empty v2 tree beside them (hybrid).
	V1 Mode = 1
	// V2 is the unified layout: one cgroup2 tree mounted at the root.
	V2 Mode = 2
)

func (m Mode) String() string {
	switch m {
	case V1:
		return "v1"
	case V2:
		return "v2"
	}
	return "unknown"
}

// Hierarchy is one mounted cgroup tree.
type Hierarchy struct {
	// Mount is where the tree is mounted, e.g. /sys/fs/cgroup/memory.
	Mount string
	// Root is the cgroup the mount shows (the mountinfo root field), "/"
	// unless the host itself runs in a cgroup namespace or a bind mount.
	Root string
	// Version is 1 or 2.
	Version int
	// Controllers are the v1 controllers attached (e.g. "cpu", "cpuacct",
	// "name=systemd"); empty for v2.
	Controllers []string
}

// dir returns the directory of the absolute cgroup path cg in h.
func (h Hierarchy) dir(cg string) string {
	cg = path.Clean("/" + cg)
	if h.Root != "/" && (cg == h.Root || strings.HasPrefix(cg, h.Root+"/")) {
		cg = strings.TrimPrefix(cg, h.Root)
	}
	return filepath.Join(h.Mount, filepath.FromSlash(cg))
}

// Dir returns the directory of the absolute cgroup path cg in h, whether
// or not it exists.
func (h Hierarchy) Dir(cg string) string { return h.dir(cg) }

func (h Hierarchy) has(controller string) bool {
	return slices.Contains(h.Controllers, controller)
}

// FS is the host's set of cgroup hierarchies under one root.
type FS struct {
	mode        Mode
	hierarchies []Hierarchy
}

// DefaultRoot is where Linux distributions mount cgroups.
const DefaultRoot = "/sys/fs/cgroup"

// Open detects the layout under root (usually DefaultRoot) from
// /proc/self/mountinfo.
func Open(root string) (*FS, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	return Parse(root, f)
}

// Parse detects the layout under root from a mountinfo table. Pure v2 is a
// root with cgroup.controllers in it (the root itself is the cgroup2 mount);
// anything else is v1, where every cgroup and cgroup2 mount below root is a
// hierarchy.
func Parse(root string, mountinfo io.Reader) (*FS, error) {
	root = filepath.Clean(root)
	var hs []Hierarchy
	sc := bufio.NewScanner(mountinfo)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		h, ok := parseMountinfoLine(sc.Text())
		if !ok {
			continue
		}
		if !under(h.Mount, root) {
			continue
		}
		hs = append(hs, h)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parse mount table: %w", err)
	}
	fsys := &FS{mode: V1}
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		fsys.mode = V2
		fsys.hierarchies = []Hierarchy{{Mount: root, Root: "/", Version: 2}}
		for _, h := range hs {
			if h.Mount == root && h.Version == 2 {
				fsys.hierarchies[0].Root = h.Root
			}
		}
		return fsys, nil
	}
	if len(hs) == 0 {
		return nil, fmt.Errorf("no cgroup hierarchy mounted under %s", root)
	}
	fsys.hierarchies = hs
	return fsys, nil
}

// under reports whether p is root or below it.
func under(p, root string) bool {
	return p == root || root == "/" || strings.HasPrefix(p, root+"/")
}

// parseMountinfoLine reads one /proc/self/mountinfo line:
// "id parent maj:min root mountpoint opts [optional...] - fstype source superopts".
func parseMountinfoLine(line string) (Hierarchy, bool) {
	fields := strings.Fields(line)
	sep := slices.Index(fields, "-")
	if sep < 6 || len(fields) < sep+4 {
		return Hierarchy{}, false
	}
	h := Hierarchy{Root: unescapeMountinfo(fields[3]), Mount: unescapeMountinfo(fields[4])}
	switch fields[sep+1] {
	case "cgroup2":
		h.Version = 2
	case "cgroup":
		h.Version = 1
		for _, o := range strings.Split(fields[sep+3], ",") {
			switch {
			case o == "rw" || o == "ro" || strings.HasPrefix(o, "release_agent=") ||
				o == "clone_children" || o == "noprefix" || o == "xattr" || o == "cpuset_v2_mode":
			default:
				h.Controllers = append(h.Controllers, o)
			}
		}
	default:
		return Hierarchy{}, false
	}
	return h, true
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Mode reports the detected layout.
func (f *FS) Mode() Mode { return f.mode }

// Hierarchies lists the mounted trees this FS reads and cleans.
func (f *FS) Hierarchies() []Hierarchy { return slices.Clone(f.hierarchies) }

// Dirs returns the directory of the absolute cgroup path cg (as in an OCI
// config's cgroupsPath, e.g. /wrenn/sb-1) in every hierarchy, whether or not
// it exists.
func (f *FS) Dirs(cg string) []string {
	dirs := make([]string, 0, len(f.hierarchies))
	for _, h := range f.hierarchies {
		dirs = append(dirs, h.dir(cg))
	}
	return dirs
}

// Existing returns the directories of cg that exist, so a test or a cleanup
// pass can tell whether a sandbox left anything behind.
func (f *FS) Existing(cg string) []string {
	var out []string
	for _, d := range f.Dirs(cg) {
		if _, err := os.Stat(d); err == nil {
			out = append(out, d)
		}
	}
	return out
}

// Stats is one sample of a cgroup's resource use.
type Stats struct {
	CPUUsage    time.Duration
	MemoryBytes uint64
	Pids        uint64
}

// Stats reads cg's CPU time, memory use and task count: on v1 from
// cpuacct.usage, memory.usage_in_bytes and pids.current; on v2 from cpu.stat
// usage_usec, memory.current and pids.current. ErrNotExist when cg is gone.
func (f *FS) Stats(cg string) (Stats, error) {
	var st Stats
	if f.mode == V2 {
		dir := f.hierarchies[0].dir(cg)
		if err := exists(dir); err != nil {
			return st, err
		}
		usec, err := readKeyed(filepath.Join(dir, "cpu.stat"), "usage_usec")
		if err != nil {
			return st, err
		}
		st.CPUUsage = time.Duration(usec) * time.Microsecond
		if st.MemoryBytes, err = readUint(filepath.Join(dir, "memory.current")); err != nil {
			return st, err
		}
		if st.Pids, err = readUint(filepath.Join(dir, "pids.current")); err != nil {
			return st, err
		}
		return st, nil
	}
	cpuDir, err := f.v1Dir(cg, "cpuacct")
	if err != nil {
		return st, err
	}
	memDir, err := f.v1Dir(cg, "memory")
	if err != nil {
		return st, err
	}
	pidsDir, err := f.v1Dir(cg, "pids")
	if err != nil {
		return st, err
	}
	ns, err := readUint(filepath.Join(cpuDir, "cpuacct.usage"))
	if err != nil {
		return st, err
	}
	st.CPUUsage = time.Duration(ns)
	if st.MemoryBytes, err = readUint(filepath.Join(memDir, "memory.usage_in_bytes")); err != nil {
		return st, err
	}
	if st.Pids, err = readUint(filepath.Join(pidsDir, "pids.current")); err != nil {
		return st, err
	}
	return st, nil
}

// v1Dir is cg's directory in the hierarchy carrying controller.
func (f *FS) v1Dir(cg, controller string) (string, error) {
	for _, h := range f.hierarchies {
		if h.Version == 1 && h.has(controller) {
			dir := h.dir(cg)
			return dir, exists(dir)
		}
	}
	return "", fmt.Errorf("cgroup v1 controller %q is not mounted", controller)
}

func exists(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cgroup %s: %w", dir, ErrNotExist)
		}
		return fmt.Errorf("stat cgroup %s: %w", dir, err)
	}
	return nil
}

func readUint(p string) (uint64, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", p, err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", p, err)
	}
	return n, nil
}

// readKeyed reads "key value" lines (cpu.stat, memory.stat) and returns key's value.
func readKeyed(p, key string) (uint64, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", p, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, " ")
		if ok && k == key {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse %s %s: %w", p, key, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("%s has no %s line", p, key)
}

// Remove deletes cg (and any child cgroups under it) from every hierarchy,
// deepest first. A cgroup that still holds tasks cannot be removed: Remove
// retries briefly (the tasks of a just-killed sandbox take a moment to be
// released) and then fails, naming the directory. Missing directories are
// not an error, so Remove is idempotent.
func (f *FS) Remove(cg string) error {
	var errs []error
	for _, dir := range f.Dirs(cg) {
		if err := removeTree(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeTree rmdirs dir and its sub-directories (cgroup directories can only
// be removed with rmdir, children first; their control files go with them).
func removeTree(dir string) error {
	var subdirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			subdirs = append(subdirs, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk cgroup %s: %w", dir, err)
	}
	// WalkDir visits parents before children; remove in reverse.
	for i := len(subdirs) - 1; i >= 0; i-- {
		if err := rmdirRetry(subdirs[i]); err != nil {
			return err
		}
	}
	return nil
}

func rmdirRetry(dir string) error {
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		err = os.Remove(dir)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}

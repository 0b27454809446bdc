package cgroups

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// hybridMountinfo is this kind of machine's table (v1 controllers, an empty
// v2 under unified/), with the test's root substituted for /sys/fs/cgroup.
const hybridMountinfo = `22 1 0:21 / /proc rw,nosuid - proc proc rw
30 25 0:26 / ROOT ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
31 30 0:27 / ROOT/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
32 30 0:28 / ROOT/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / ROOT/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / ROOT/pids rw,relatime - cgroup cgroup rw,pids
35 30 0:31 / ROOT/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
36 30 0:32 / ROOT/unified rw,relatime - cgroup2 cgroup2 rw
37 1 0:33 / /other/cgroup rw - cgroup cgroup rw,freezer
`

// combinedMountinfo has systemd's combined cpu,cpuacct hierarchy and a mount
// root that is not "/".
const combinedMountinfo = `31 30 0:27 / ROOT/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
33 30 0:29 /outer ROOT/memory rw - cgroup cgroup rw,memory
34 30 0:30 / ROOT/pids rw - cgroup cgroup rw,pids
`

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func parse(t *testing.T, root, table string) *FS {
	t.Helper()
	f, err := Parse(root, strings.NewReader(strings.ReplaceAll(table, "ROOT", root)))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return f
}

func TestParse(t *testing.T) {
	t.Parallel()
	t.Run("hybrid", func(t *testing.T) {
		t.Parallel()
		root := t.TempDir()
		f := parse(t, root, hybridMountinfo)
		if f.Mode() != V1 {
			t.Fatalf("mode %v, want v1", f.Mode())
		}
		var mounts []string
		for _, h := range f.Hierarchies() {
			mounts = append(mounts, strings.TrimPrefix(h.Mount, root))
		}
		want := []string{"/cpu", "/cpuacct", "/memory", "/pids", "/systemd", "/unified"}
		if !slices.Equal(mounts, want) {
			t.Fatalf("hierarchies %v, want %v", mounts, want)
		}
		sd := f.Hierarchies()[4]
		if !slices.Equal(sd.Controllers, []string{"name=systemd"}) {
			t.Errorf("systemd controllers %v", sd.Controllers)
		}
		if u := f.Hierarchies()[5]; u.Version != 2 || len(u.Controllers) != 0 {
			t.Errorf("unified hierarchy %+v", u)
		}
	})
	t.Run("v2", func(t *testing.T) {
		t.Parallel()
		root := t.TempDir()
		writeFile(t, filepath.Join(root, "cgroup.controllers"), "cpu memory pids\n")
		f := parse(t, root, "30 25 0:26 / ROOT rw - cgroup2 cgroup2 rw,nsdelegate\n")
		if f.Mode() != V2 {
			t.Fatalf("mode %v, want v2", f.Mode())
		}
		if got := f.Dirs("/wrenn/sb-1"); !slices.Equal(got, []string{filepath.Join(root, "wrenn/sb-1")}) {
			t.Fatalf("dirs %v", got)
		}
	})
	t.Run("none", func(t *testing.T) {
		t.Parallel()
		if _, err := Parse(t.TempDir(), strings.NewReader("22 1 0:21 / /proc rw - proc proc rw\n")); err == nil {
			t.Fatal("Parse of a table without cgroups succeeded")
		}
	})
	t.Run("escaped and non-root mounts", func(t *testing.T) {
		t.Parallel()
		root := t.TempDir()
		f := parse(t, root, combinedMountinfo+`40 30 0:35 / ROOT/with\040space rw - cgroup cgroup rw,blkio`+"\n")
		dirs := f.Dirs("/outer/wrenn/sb-1")
		want := []string{
			filepath.Join(root, "cpu,cpuacct/outer/wrenn/sb-1"),
			filepath.Join(root, "memory/wrenn/sb-1"),
			filepath.Join(root, "pids/outer/wrenn/sb-1"),
			filepath.Join(root, "with space/outer/wrenn/sb-1"),
		}
		if !slices.Equal(dirs, want) {
			t.Fatalf("dirs\n got %v\nwant %v", dirs, want)
		}
	})
}

func TestStats(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		table string
		v2    bool
		files map[string]string
		want  Stats
	}{
		{
			name:  "v1 separate hierarchies",
			table: hybridMountinfo,
			files: map[string]string{
				"cpuacct/wrenn/sb-1/cpuacct.usage":        "1500000000\n",
				"memory/wrenn/sb-1/memory.usage_in_bytes": "4096\n",
				"pids/wrenn/sb-1/pids.current":            "7\n",
			},
			want: Stats{CPUUsage: 1500 * time.Millisecond, MemoryBytes: 4096, Pids: 7},
		},
		{
			name:  "v1 combined cpu,cpuacct",
			table: combinedMountinfo,
			files: map[string]string{
				"cpu,cpuacct/wrenn/sb-1/cpuacct.usage":    "42\n",
				"memory/wrenn/sb-1/memory.usage_in_bytes": "1\n",
				"pids/wrenn/sb-1/pids.current":            "1\n",
			},
			want: Stats{CPUUsage: 42, MemoryBytes: 1, Pids: 1},
		},
		{
			name:  "v2",
			table: "30 25 0:26 / ROOT rw - cgroup2 cgroup2 rw\n",
			v2:    true,
			files: map[string]string{
				"wrenn/sb-1/cpu.stat":       "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
				"wrenn/sb-1/memory.current": "8192\n",
				"wrenn/sb-1/pids.current":   "3\n",
			},
			want: Stats{CPUUsage: 2500 * time.Millisecond, MemoryBytes: 8192, Pids: 3},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			if tt.v2 {
				writeFile(t, filepath.Join(root, "cgroup.controllers"), "cpu memory pids\n")
			}
			for p, c := range tt.files {
				writeFile(t, filepath.Join(root, p), c)
			}
			f := parse(t, root, tt.table)
			got, err := f.Stats("/wrenn/sb-1")
			if err != nil {
				t.Fatalf("Stats: %v", err)
			}
			if got != tt.want {
				t.Fatalf("Stats = %+v, want %+v", got, tt.want)
			}
			if _, err := f.Stats("/wrenn/sb-gone"); !errors.Is(err, ErrNotExist) {
				t.Fatalf("Stats of a missing cgroup: %v, want ErrNotExist", err)
			}
		})
	}
}

func TestStatsCorrupt(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "cgroup.controllers"), "")
	writeFile(t, filepath.Join(root, "wrenn/sb-1/cpu.stat"), "user_usec 1\n")
	f := parse(t, root, "")
	if _, err := f.Stats("/wrenn/sb-1"); err == nil || errors.Is(err, ErrNotExist) {
		t.Fatalf("Stats with no usage_usec: %v, want a parse error", err)
	}
	writeFile(t, filepath.Join(root, "wrenn/sb-1/cpu.stat"), "usage_usec x\n")
	if _, err := f.Stats("/wrenn/sb-1"); err == nil {
		t.Fatal("Stats with a bad number succeeded")
	}
}

func TestRemove(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	f := parse(t, root, hybridMountinfo)
	// Leftovers in some hierarchies, with a child cgroup in one; a sibling
	// that must survive.
	for _, d := range []string{"cpu/wrenn/sb-1/child", "memory/wrenn/sb-1", "unified/wrenn/sb-1", "memory/wrenn/sb-2"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(f.Existing("/wrenn/sb-1")); got != 3 {
		t.Fatalf("Existing found %d dirs, want 3", got)
	}
	if err := f.Remove("/wrenn/sb-1"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if got := f.Existing("/wrenn/sb-1"); len(got) != 0 {
		t.Fatalf("left behind: %v", got)
	}
	if _, err := os.Stat(filepath.Join(root, "memory/wrenn/sb-2")); err != nil {
		t.Fatalf("sibling removed: %v", err)
	}
	if err := f.Remove("/wrenn/sb-1"); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

func TestRemoveFails(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	f := parse(t, root, hybridMountinfo)
	// A regular file inside makes rmdir fail with ENOTEMPTY: Remove must
	// report it rather than claim success.
	writeFile(t, filepath.Join(root, "pids/wrenn/sb-1/stray"), "x")
	if err := f.Remove("/wrenn/sb-1"); err == nil {
		t.Fatal("Remove of a non-removable cgroup succeeded")
	}
}

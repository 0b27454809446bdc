package cgroup

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestParseProcCgroup(t *testing.T) {
	t.Parallel()
	hybrid := "9:name=systemd:/\n8:pids:/a/b\n4:memory:/a/b\n2:cpuacct:/\n1:cpu,cpuacct:/a\n0::/\n"
	tests := []struct {
		name    string
		in      string
		v2      bool
		want    map[string]string
		wantErr bool
	}{
		{name: "v1 hybrid", in: hybrid, want: map[string]string{"pids": "/a/b", "memory": "/a/b", "cpu": "/a"}},
		{name: "v2 unified", in: "0::/user.slice/envd\n", v2: true, want: map[string]string{"": "/user.slice/envd"}},
		{name: "v2 ignores v1 lines", in: hybrid, v2: true, want: map[string]string{"": "/"}},
		{name: "relative path", in: "0::a/b\n", v2: true, wantErr: true},
		{name: "dot-dot", in: "4:memory:/a/../..\n", wantErr: true},
		{name: "nothing usable", in: "7:blkio:/\n", wantErr: true},
		{name: "empty", in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, err := ParseProcCgroup(strings.NewReader(tt.in), "/sys/fs/cgroup", tt.v2)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parsed %+v, want an error", l)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseProcCgroup: %v", err)
			}
			if !reflect.DeepEqual(l.Paths, tt.want) || l.V2 != tt.v2 {
				t.Errorf("got %+v, want paths %v", l, tt.want)
			}
		})
	}
}

func TestCreateRejectsNames(t *testing.T) {
	t.Parallel()
	l := Layout{Root: t.TempDir(), V2: true, Paths: map[string]string{"": "/"}}
	for _, name := range []string{"", ".", "..", "a/b", "x\x00"} {
		if _, err := l.Create(name); err == nil {
			t.Errorf("Create(%q) accepted", name)
		}
	}
}

// TestCreateCleansUpOnFailure uses plain directories, which lack
// cgroup.procs, so Create fails after making the first directory and must
// take it away again.
func TestCreateCleansUpOnFailure(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	for _, c := range []string{"memory", "pids"} {
		if err := os.MkdirAll(filepath.Join(root, c, "envd"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l := Layout{Root: root, Paths: map[string]string{"memory": "/envd", "pids": "/envd", "cpu": "/missing"}}
	if g, err := l.Create("user"); err == nil {
		t.Fatalf("Create on non-cgroup directories succeeded: %v", g.Dirs())
	}
	for _, c := range []string{"memory", "pids"} {
		if _, err := os.Stat(filepath.Join(root, c, "envd", "user")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s/envd/user left behind: %v", c, err)
		}
	}
}

// TestGroupOnRealCgroups creates a throwaway parent group at the top of each
// hierarchy (never under the test's own cgroup), a user group in it, moves a
// process in, and removes everything.
func TestGroupOnRealCgroups(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create cgroups")
	}
	const root = "/sys/fs/cgroup"
	var b [4]byte
	_, _ = rand.Read(b[:])
	parent := "/wrenn-cgtest-" + hex.EncodeToString(b[:])
	l := Layout{Root: root, Paths: map[string]string{}}
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		l.V2 = true
		l.Paths[""] = parent
	} else {
		for _, c := range V1Controllers {
			if _, err := os.Stat(filepath.Join(root, c, "cgroup.procs")); err == nil {
				l.Paths[c] = parent
			}
		}
	}
	if len(l.Paths) == 0 {
		t.Skipf("skipping: no cgroup hierarchy mounted under %s", root)
	}
	for ctrl := range l.Paths {
		dir := filepath.Join(root, ctrl, parent)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Skipf("skipping: cannot create cgroup %s: %v", dir, err)
		}
		t.Cleanup(func() {
			if err := os.Remove(dir); err != nil {
				t.Errorf("remove test cgroup %s: %v", dir, err)
			}
		})
	}

	g, err := l.Create("user")
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	again, err := l.Create("user")
	if err != nil {
		t.Fatalf("Create of an existing group (envd restart): %v", err)
	}
	if !reflect.DeepEqual(again.Dirs(), g.Dirs()) {
		t.Errorf("reused group dirs %v, want %v", again.Dirs(), g.Dirs())
	}
	if err := again.Remove(); err != nil {
		t.Errorf("Remove of a reused group must leave it: %v", err)
	}

	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sleep: %v", err)
	}
	killed := false
	kill := func() {
		if !killed {
			killed = true
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
	t.Cleanup(kill)
	if err := g.Add(cmd.Process.Pid); err != nil {
		t.Fatalf("Add: %v", err)
	}
	f, err := os.Open("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseProcCgroup(f, root, l.V2)
	f.Close()
	if err != nil {
		t.Fatalf("read the child's cgroups: %v", err)
	}
	for ctrl := range l.Paths {
		if want := parent + "/user"; got.Paths[ctrl] != want {
			t.Errorf("child in %q cgroup %q, want %q", ctrl, got.Paths[ctrl], want)
		}
	}
	if err := g.Remove(); err == nil {
		t.Errorf("Remove succeeded while a process is in the group")
	}
	kill()
	if err := g.Remove(); err != nil {
		t.Fatalf("Remove after the process ended: %v", err)
	}
	for _, dir := range g.Dirs() {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists: %v", dir, err)
		}
	}
}

func FuzzParseProcCgroup(f *testing.F) {
	f.Add("4:memory:/a/b\n1:cpu,cpuacct:/\n0::/\n", false)
	f.Add("0::/x\n", true)
	f.Fuzz(func(t *testing.T, s string, v2 bool) {
		l, err := ParseProcCgroup(strings.NewReader(s), "/sys/fs/cgroup", v2)
		if err != nil {
			return
		}
		for ctrl, p := range l.Paths {
			if !strings.HasPrefix(p, "/") || strings.Contains(p+"/", "/../") {
				t.Fatalf("%q: path %q for %q is not absolute and clean", s, p, ctrl)
			}
		}
	})
}

func TestLimitMemory(t *testing.T) {
	t.Parallel()
	quarter := func(limit uint64) uint64 { return limit / 4 }
	tests := []struct {
		name      string
		v2        bool
		parent    string // memory.limit_in_bytes of envd's group; "" for none
		wantChild string // what the child's file holds afterwards
		want      uint64
		wantErr   bool
		reserve   func(uint64) uint64 // quarter when nil
	}{
		{name: "divides the sandbox's limit", parent: "134217728\n", wantChild: "100663296", want: 100663296},
		{name: "unlimited sandbox", parent: "9223372036854771712\n", wantChild: "untouched"},
		{name: "v2 is left alone", v2: true, parent: "134217728\n", wantChild: "untouched"},
		{name: "garbage limit", parent: "lots\n", wantChild: "untouched", wantErr: true},
		{name: "no limit file", wantChild: "untouched", wantErr: true},
		{name: "reserve eats it all", parent: "3\n", wantChild: "untouched", wantErr: true, reserve: func(l uint64) uint64 { return l }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			group := filepath.Join(root, "memory", "sb")
			if err := os.MkdirAll(filepath.Join(group, "user"), 0o755); err != nil {
				t.Fatal(err)
			}
			if tt.parent != "" {
				if err := os.WriteFile(filepath.Join(group, "memory.limit_in_bytes"), []byte(tt.parent), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			childFile := filepath.Join(group, "user", "memory.limit_in_bytes")
			if err := os.WriteFile(childFile, []byte("untouched"), 0o644); err != nil {
				t.Fatal(err)
			}
			l := Layout{Root: root, V2: tt.v2, Paths: map[string]string{"memory": "/sb"}}
			reserve := tt.reserve
			if reserve == nil {
				reserve = quarter
			}
			got, err := l.LimitMemory("user", reserve)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("LimitMemory = %d, %v; want %d, error %v", got, err, tt.want, tt.wantErr)
			}
			if b, _ := os.ReadFile(childFile); string(b) != tt.wantChild {
				t.Errorf("child limit file holds %q, want %q", b, tt.wantChild)
			}
		})
	}
}

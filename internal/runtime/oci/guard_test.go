package oci

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
)

// guardedFixture is a runsc driver over the fake runtime with an OOM guard.
func guardedFixture(t *testing.T) fixture {
	t.Helper()
	return newFixture(t, func(c *Config) {
		rc := Runsc(filepath.Join(t.TempDir(), "runsc"), nil)
		c.Binary, c.Name, c.Root, c.GlobalArgs, c.Wrap = rc.Binary, rc.Name, rc.Root, rc.GlobalArgs, rc.Wrap
		c.PidsOverhead, c.PidsPerTask, c.MemoryOverheadMB = rc.PidsOverhead, rc.PidsPerTask, rc.MemoryOverheadMB
		c.OOMGuard, c.OOMHeadroomMB = "/opt/wrenn/wrenn-oomguard", RunscOOMHeadroomMB
	})
}

// executable writes an executable file at rel under root.
func executable(t *testing.T, root, rel string) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

func readSpec(t *testing.T, stateDir string) ociSpec {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, configFile))
	if err != nil {
		t.Fatal(err)
	}
	var spec ociSpec
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	return spec
}

func TestGuardedSpec(t *testing.T) {
	t.Parallel()
	f := guardedFixture(t)
	s := testSpec(t, "sb-1")
	executable(t, s.RootFS, s.Args[0])
	if err := f.d.Create(context.Background(), s); err != nil {
		t.Fatalf("Create: %v", err)
	}
	spec := readSpec(t, s.StateDir)
	// gVisor answers syscalls itself: no host seccomp profile.
	if spec.Linux.Seccomp != nil {
		t.Errorf("runsc sandbox got a seccomp profile: %+v", spec.Linux.Seccomp)
	}
	// The init runs under the guard with the sandbox's own limit...
	want := []string{guardPath, "-limit", strconv.FormatInt(int64(s.MemoryMB)<<20, 10), "--", s.Args[0]}
	if !slices.Equal(spec.Process.Args, want) {
		t.Errorf("args %q, want %q", spec.Process.Args, want)
	}
	// ...which the sandbox sees read-only in its /dev tmpfs...
	guard := slices.IndexFunc(spec.Mounts, func(m ociMnt) bool { return m.Destination == guardPath })
	if guard < 0 || spec.Mounts[guard].Type != "bind" || spec.Mounts[guard].Source != "/opt/wrenn/wrenn-oomguard" ||
		!slices.Equal(spec.Mounts[guard].Options, []string{"bind", "ro", "nosuid", "nodev"}) {
		t.Errorf("no read-only bind of the guard at %s in %+v", guardPath, spec.Mounts)
	}
	if i := slices.IndexFunc(spec.Mounts, func(m ociMnt) bool { return m.Destination == "/dev" }); i < 0 || spec.Mounts[len(spec.Mounts)-1].Destination != guardPath {
		t.Errorf("the guard must be mounted after /dev: %+v", spec.Mounts)
	}
	// ...and the host cgroup has the guard's headroom on top of the
	// Sentry's, so the guard acts first.
	if got, want := spec.Linux.Resources.Memory.Limit, int64(s.MemoryMB+RunscOOMHeadroomMB+RunscMemoryOverheadMB)<<20; got != want {
		t.Errorf("host memory limit %d, want %d", got, want)
	}
}

func TestGuardedSpecNoMemoryLimitNoGuard(t *testing.T) {
	t.Parallel()
	f := guardedFixture(t)
	s := testSpec(t, "sb-1")
	s.MemoryMB = 0
	executable(t, s.RootFS, s.Args[0])
	if err := f.d.Create(context.Background(), s); err != nil {
		t.Fatalf("Create: %v", err)
	}
	spec := readSpec(t, s.StateDir)
	if !slices.Equal(spec.Process.Args, s.Args) || spec.Linux.Resources.Memory != nil {
		t.Fatalf("unlimited sandbox got args %q memory %+v", spec.Process.Args, spec.Linux.Resources.Memory)
	}
}

func TestGuardedCreateRefusesMissingInit(t *testing.T) {
	t.Parallel()
	f := guardedFixture(t)
	s := testSpec(t, "sb-1")
	// Not there, not executable, a directory: the guard would start and
	// only then fail, so the driver must refuse before running anything.
	for name, prep := range map[string]func(){
		"missing": func() {},
		"not executable": func() {
			_ = os.MkdirAll(filepath.Join(s.RootFS, "usr/local/bin"), 0o755)
			_ = os.WriteFile(filepath.Join(s.RootFS, s.Args[0]), nil, 0o644)
		},
	} {
		prep()
		f.runc.cmds = nil
		if err := f.d.Create(context.Background(), s); err == nil {
			t.Fatalf("%s init: Create succeeded", name)
		}
		if len(f.runc.cmds) != 0 {
			t.Fatalf("%s init: Create ran %d runtime commands", name, len(f.runc.cmds))
		}
	}
}

func TestCheckExecutable(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	executable(t, root, "bin/busybox")
	outside := t.TempDir()
	executable(t, outside, "evil")
	links := map[string]string{
		"bin/sh":       "busybox",      // relative
		"usr/bin/sh":   "/bin/busybox", // absolute: inside root, not the host's /bin
		"sbin":         "bin",          // a directory link
		"bin/escape":   "../../../../../../" + filepath.Join(outside, "evil")[1:],
		"bin/host":     filepath.Join(outside, "evil"), // absolute: resolved in root, where it does not exist
		"bin/loop":     "loop",
		"bin/dangling": "nothing",
	}
	for name, target := range links {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(root, "bin/dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  []string
		ok   bool
	}{
		{"/bin/busybox", nil, true},
		{"/bin/sh", nil, true},
		{"/usr/bin/sh", nil, true},
		{"/sbin/sh", nil, true},
		{"/usr/../bin/./sh", nil, true},
		{"sh", []string{"PATH=/nope:/bin"}, true},
		{"sh", []string{"PATH=/nope"}, false},
		{"sh", nil, false},
		{"/bin/escape", nil, false},
		{"/bin/host", nil, false},
		{"/bin/loop", nil, false},
		{"/bin/dangling", nil, false},
		{"/bin/dir", nil, false},
		{"/bin/absent", nil, false},
	}
	for _, tt := range tests {
		if err := checkExecutable(root, tt.name, tt.env); (err == nil) != tt.ok {
			t.Errorf("checkExecutable(%q, %q) = %v, want ok %v", tt.name, tt.env, err, tt.ok)
		}
	}
}

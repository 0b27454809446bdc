package oci

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/wrenn/wrenn/internal/runtime"
)

// runscFixture is a driver with Runsc's config over the fake runtime.
func runscFixture(t *testing.T) fixture {
	t.Helper()
	return newFixture(t, func(c *Config) {
		rc := Runsc(filepath.Join(t.TempDir(), "runsc"), nil)
		c.Binary, c.Name, c.Root = rc.Binary, rc.Name, rc.Root
		c.GlobalArgs, c.Wrap = rc.GlobalArgs, rc.Wrap
		c.PidsOverhead, c.MemoryOverheadMB, c.ResumeBeforeKill = rc.PidsOverhead, rc.MemoryOverheadMB, rc.ResumeBeforeKill
		c.PidsPerTask, c.HostPidsCap = rc.PidsPerTask, rc.HostPidsCap
	})
}

func TestRunscConfig(t *testing.T) {
	t.Parallel()
	f := runscFixture(t)
	if f.d.Name() != "runsc" || filepath.Base(f.d.Root()) != "runsc" {
		t.Fatalf("Name %q Root %q", f.d.Name(), f.d.Root())
	}
	s := testSpec(t, "sb-1")
	if err := f.d.Create(context.Background(), s); err != nil {
		t.Fatalf("Create: %v", err)
	}
	// Every command runs under the /proc/sys/net workaround with the
	// ptrace platform and the driver's own root, global flags first.
	prefix := append(slices.Clone(RunscHideNetSysctls), "runsc", "--root", f.d.Root(), "--platform=ptrace")
	for _, c := range f.runc.cmds {
		if !slices.Equal(c.Args[:len(prefix)], prefix) {
			t.Fatalf("argv %q does not start with %q", c.Args, prefix)
		}
	}
	// The limits carry the runtime's headroom on top of what was asked.
	b, err := os.ReadFile(filepath.Join(s.StateDir, configFile))
	if err != nil {
		t.Fatal(err)
	}
	var spec ociSpec
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	// gVisor enforces the pids limit inside as RLIMIT_NPROC; the host
	// cgroup gets room for the host tasks that many guest tasks cost.
	// Here the capped room cuts the guest's limit below Spec.Pids.
	host := min(s.Pids*RunscPidsPerTask, max(s.Pids, RunscHostPidsCap))
	guest := min(s.Pids, host/RunscPidsPerTask)
	if got, want := spec.Linux.Resources.Pids.Limit, host+RunscPidsOverhead; got != want {
		t.Errorf("pids limit %d, want %d", got, want)
	}
	if !slices.Contains(spec.Process.Rlimits, ociRlimit{Type: "RLIMIT_NPROC", Hard: uint64(guest), Soft: uint64(guest)}) {
		t.Errorf("rlimits %+v, want RLIMIT_NPROC %d", spec.Process.Rlimits, guest)
	}
	if got, want := spec.Linux.Resources.Memory.Limit, int64(s.MemoryMB+RunscMemoryOverheadMB)<<20; got != want {
		t.Errorf("memory limit %d, want %d", got, want)
	}
	if spec.Linux.Resources.Memory.Swap != spec.Linux.Resources.Memory.Limit {
		t.Errorf("swap %d, want the memory limit (no swap)", spec.Linux.Resources.Memory.Swap)
	}
	// runsc keeps a state file, not a directory, per container: a second
	// Create of the id must see it and leave the first alone.
	f.runc.cmds = nil
	if err := f.d.Create(context.Background(), s); err == nil {
		t.Fatal("second Create with the same id succeeded")
	}
	if len(f.runc.cmds) != 0 {
		t.Errorf("duplicate Create ran %q", f.runc.subcommands(len(prefix)))
	}
}

func TestRunscNoLimitsStayUnlimited(t *testing.T) {
	t.Parallel()
	f := runscFixture(t)
	s := testSpec(t, "sb-1")
	s.Pids, s.MemoryMB = 0, 0
	if err := f.d.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(s.StateDir, configFile))
	if err != nil {
		t.Fatal(err)
	}
	var spec ociSpec
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	if spec.Linux.Resources.Pids != nil || spec.Linux.Resources.Memory != nil {
		t.Fatalf("unset limits got headroom only: %+v", spec.Linux.Resources)
	}
	for _, r := range spec.Process.Rlimits {
		if r.Type == "RLIMIT_NPROC" {
			t.Fatalf("no pids limit, yet RLIMIT_NPROC %d", r.Hard)
		}
	}
}

func TestRunscDestroyPausedResumesFirst(t *testing.T) {
	t.Parallel()
	f := runscFixture(t)
	ctx := context.Background()
	if err := f.d.Create(ctx, testSpec(t, "sb-1")); err != nil {
		t.Fatal(err)
	}
	if err := f.d.Pause(ctx, "sb-1"); err != nil {
		t.Fatal(err)
	}
	f.runc.cmds = nil
	if err := f.d.Destroy(ctx, "sb-1"); err != nil {
		t.Fatal(err)
	}
	want := []string{"state sb-1", "resume sb-1", "kill --all sb-1 KILL", "state sb-1", "delete --force sb-1"}
	if got := f.runc.subcommands(len(RunscHideNetSysctls) + 4); !slices.Equal(got, want) {
		t.Fatalf("destroy commands\n got %q\nwant %q", got, want)
	}
	if _, err := f.d.State(ctx, "sb-1"); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("State after Destroy: %v, want ErrNotFound", err)
	}
}

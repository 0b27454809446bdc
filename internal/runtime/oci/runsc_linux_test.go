package oci

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wrenn/wrenn/internal/runtime"
	"github.com/wrenn/wrenn/internal/runtime/runtimetest"
	"github.com/wrenn/wrenn/internal/testenv"
)

// newRunscDriver returns a driver over the real runsc (Runsc's config) with
// a state root and a cgroup parent of this test's own, both removed when the
// test ends. Outside CI it skips naming what is missing; in CI
// (testenv.InCI) a missing runsc fails, since the conformance suite on
// gVisor is part of what CI must prove.
func newRunscDriver(t testing.TB) *Driver {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (namespaces, cgroups, mounts)")
	}
	if err := Available(RunscName); err != nil {
		missing = append(missing, "a usable runsc (apt-get install runsc): "+err.Error())
	}
	if len(missing) > 0 {
		msg := "the runsc driver test needs " + strings.Join(missing, "; ")
		if testenv.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	parent := "/wrenn-test-" + hex.EncodeToString(b)
	cfg := Runsc(filepath.Join(t.TempDir(), "runsc"), nil)
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg.CgroupParent = parent
	cfg.OOMGuard = buildOOMGuard(t)
	d, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Cgroups().Remove(parent); err != nil {
			t.Errorf("remove test cgroup parent %s: %v", parent, err)
		}
	})
	return d
}

func TestRunscConformance(t *testing.T) {
	d := newRunscDriver(t)
	runtimetest.Run(t, runtimetest.Harness{
		New:       func(*testing.T) runtime.Runtime { return d },
		Leftovers: d.leftovers,
		GVisor:    true,
		HostPids:  d.HostPids,
	})
	ids, err := d.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 0 {
		t.Fatalf("runsc still lists %v", ids)
	}
}

// buildOOMGuard builds this tree's oomguard, static, into a test
// directory: the guard the driver's sandboxes run must be the code under
// test, not whatever an earlier build left in PATH.
func buildOOMGuard(t testing.TB) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), RunscOOMGuardName)
	cmd := exec.Command("go", "build", "-o", out, "github.com/wrenn/wrenn/internal/runtime/oci/oomguard")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build oomguard: %v\n%s", err, b)
	}
	return out
}

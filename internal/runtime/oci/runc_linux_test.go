package oci

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/runtime"
	"github.com/wrenn/wrenn/internal/runtime/runtimetest"
)

// newRuncDriver returns a driver over the real runc with a state root and a
// cgroup parent of this test's own, both removed when the test ends, so the
// suite neither sees nor disturbs a running agent's sandboxes.
func newRuncDriver(t *testing.T) *Driver {
	t.Helper()
	runtimetest.RequireRoot(t, "the runc driver test")
	if err := Available("runc"); err != nil {
		t.Skipf("runc is not usable here (apt-get install runc): %v", err)
	}
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	parent := "/wrenn-test-" + hex.EncodeToString(b)
	d, err := New(Config{
		Binary:       "runc",
		Root:         filepath.Join(t.TempDir(), "runc"),
		CgroupParent: parent,
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		// Runs after every sandbox of the test is destroyed (registered
		// first, so run last): only the empty parent can remain.
		if err := d.Cgroups().Remove(parent); err != nil {
			t.Errorf("remove test cgroup parent %s: %v", parent, err)
		}
	})
	return d
}

// leftovers is what runc and the cgroup tree still hold for id.
func (d *Driver) leftovers(id string) []string {
	var left []string
	if _, err := os.Stat(filepath.Join(d.Root(), id)); err == nil {
		left = append(left, filepath.Join(d.Root(), id))
	}
	return append(left, d.Cgroups().Existing(d.CgroupPath(id))...)
}

func TestRuncConformance(t *testing.T) {
	d := newRuncDriver(t)
	runtimetest.Run(t, runtimetest.Harness{
		New:       func(*testing.T) runtime.Runtime { return d },
		Leftovers: d.leftovers,
	})
	// The suite's sandboxes are all gone: the state root is empty.
	ids, err := d.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 0 {
		t.Fatalf("runc still lists %v", ids)
	}
}

// BenchmarkRuncCreateDestroy measures one sandbox's create (bundle, create,
// start, state check) and destroy on the real runc.
func BenchmarkRuncCreateDestroy(b *testing.B) {
	runtimetest.RequireRoot(b, "the runc benchmark")
	if err := Available("runc"); err != nil {
		b.Skipf("runc is not usable here: %v", err)
	}
	d, err := New(Config{Binary: "runc", Root: filepath.Join(b.TempDir(), "runc"), CgroupParent: "/wrenn-bench"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = d.Cgroups().Remove("/wrenn-bench") })
	rootfs := runtimetest.BusyboxRootFS(b)
	ctx := context.Background()
	var create, destroy time.Duration
	for i := 0; b.Loop(); i++ {
		s := runtime.Spec{ID: fmt.Sprintf("sb-bench-%d", i), StateDir: b.TempDir(), RootFS: rootfs,
			Args: []string{"/bin/sleep", "100"}, VCPUs: 1, MemoryMB: 64, Pids: 64}
		start := time.Now()
		if err := d.Create(ctx, s); err != nil {
			b.Fatal(err)
		}
		create += time.Since(start)
		start = time.Now()
		if err := d.Destroy(ctx, s.ID); err != nil {
			b.Fatal(err)
		}
		destroy += time.Since(start)
	}
	b.ReportMetric(float64(create.Milliseconds())/float64(b.N), "create-ms/op")
	b.ReportMetric(float64(destroy.Milliseconds())/float64(b.N), "destroy-ms/op")
}

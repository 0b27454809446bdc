package oci

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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

// TestRuncSeccomp runs a probe as a runc sandbox's init and checks which
// syscalls the sandbox's seccomp profile refuses, and that it refuses them
// itself: each refused call answers differently without the profile (on
// this host, outside a sandbox, the probe gets EINVAL, success, EINVAL,
// EFAULT, success and EBADF for the six).
func TestRuncSeccomp(t *testing.T) {
	d := newRuncDriver(t)
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go is not on PATH to build the probe")
	}
	root := runtimetest.BusyboxRootFS(t)
	build := exec.Command("go", "build", "-o", filepath.Join(root, "sysprobe"), "./testdata/sysprobe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the probe: %v: %s", err, out)
	}
	ctx := context.Background()
	s := runtime.Spec{ID: "sb-seccomp-" + hex.EncodeToString([]byte(t.Name()))[:8], StateDir: t.TempDir(), RootFS: root,
		Args: []string{"/sysprobe"}, VCPUs: 1, MemoryMB: 128, Pids: 64}
	if err := d.Create(ctx, s); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Destroy(ctx, s.ID); err != nil {
			t.Errorf("Destroy: %v", err)
		}
	})
	var out []byte
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		out, _ = os.ReadFile(filepath.Join(s.StateDir, initLog))
		if strings.Contains(string(out), "done\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the probe did not finish in 10 s; it printed %q", out)
		}
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if name, errno, ok := strings.Cut(line, " "); ok {
			got[name] = errno
		}
	}
	eperm, enosys := strconv.Itoa(int(unix.EPERM)), strconv.Itoa(int(unix.ENOSYS))
	for name, want := range map[string]string{
		"unshare-newuser": eperm, "clone-newuser": eperm, "clone3": enosys,
		"io_uring_setup": eperm, "keyctl": eperm, "setns": eperm,
		// What programs need keeps working.
		"unshare-fs": "0", "getpid": "0", "clock_gettime": "0", "fork-exec": "0",
	} {
		if got[name] != want {
			t.Errorf("%s: errno %q, want %s", name, got[name], want)
		}
	}
}

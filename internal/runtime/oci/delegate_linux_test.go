package oci

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/runtime"
	"github.com/wrenn/wrenn/internal/runtime/cgroups"
	"github.com/wrenn/wrenn/internal/runtime/runtimetest"
)

// TestRuncDelegatesUserCgroup boots a busybox sandbox on the real runc whose
// init, as root inside, tries what envd does (move itself into UserCgroup,
// limit it) and what it must not be able to (raise the sandbox's own limit,
// make cgroups outside UserCgroup), and reports through files. Destroy
// leaves no cgroup behind.
func TestRuncDelegatesUserCgroup(t *testing.T) {
	d := newRuncDriver(t)
	hs := d.delegatedHierarchies()
	if len(hs) == 0 {
		t.Fatal("no delegated hierarchy on this host")
	}
	// The memory hierarchy's directory inside: /sys/fs/cgroup on v2.
	mem := "/sys/fs/cgroup"
	limitFile, procsOK := "memory.max", "cgroup.procs"
	if d.cg.Mode() == cgroups.V1 {
		mem, limitFile = "/sys/fs/cgroup/memory", "memory.limit_in_bytes"
	}
	script := `cg=` + mem + `
try() { if "$@" 2>/dev/null; then echo yes; else echo no; fi; }
echo $(try sh -c "echo $$ > $cg/` + UserCgroup + `/` + procsOK + `") > /moved.tmp
grep -E '^0::|:memory:' /proc/self/cgroup | head -n1 | cut -d: -f3 > /where.tmp
echo $(try sh -c "echo 33554432 > $cg/` + UserCgroup + `/` + limitFile + `") > /limited.tmp
echo $(try sh -c "echo 1073741824 > $cg/` + limitFile + `") > /raised.tmp
echo $(try mkdir $cg/escape) > /escaped.tmp
for f in moved where limited raised escaped; do mv /$f.tmp /$f; done
echo done > /done
exec sleep 600`
	rootfs := runtimetest.BusyboxRootFS(t)
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	id := "sb-deleg-" + hex.EncodeToString(b)
	s := runtime.Spec{ID: id, StateDir: t.TempDir(), RootFS: rootfs, Args: []string{"/bin/sh", "-c", script},
		VCPUs: 1, MemoryMB: 64, Pids: 64}
	ctx := context.Background()
	if err := d.Create(ctx, s); err != nil {
		t.Fatalf("Create: %v", err)
	}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			_ = d.Destroy(context.Background(), id)
		}
	})
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(rootfs, name))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	deadline := time.Now().Add(20 * time.Second)
	for read("done") != "done" {
		if time.Now().After(deadline) {
			t.Fatal("the sandbox's script did not finish")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range []struct{ file, want, what string }{
		{"moved", "yes", "move a process into " + UserCgroup},
		{"where", "/" + UserCgroup, "see itself in " + UserCgroup + " (cgroup namespace)"},
		{"limited", "yes", "limit " + UserCgroup},
		{"raised", "no", "refuse to raise the sandbox's own memory limit"},
		{"escaped", "no", "refuse a cgroup outside " + UserCgroup},
	} {
		if got := read(c.file); got != c.want {
			t.Errorf("inside the sandbox: %s: got %q, want %q", c.what, got, c.want)
		}
	}
	if err := d.Destroy(ctx, id); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	destroyed = true
	if left := d.leftovers(id); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}

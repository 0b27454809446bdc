package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// poolFiles lists the formatted disks in the pool's directory.
func poolFiles(t *testing.T, s *Store) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(s.runDir, poolDirName, "*.ext4"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// ext4UUID reads the filesystem UUID from an ext4 image's superblock.
func ext4UUID(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 16)
	if _, err := f.ReadAt(b, 1024+0x68); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func waitPool(t *testing.T, s *Store, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for len(poolFiles(t, s)) != n {
		if time.Now().After(deadline) {
			t.Fatalf("pool holds %d disks, want %d", len(poolFiles(t, s)), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDiskPool(t *testing.T) {
	t.Parallel()
	ts := newTestStore(t)
	ctx := context.Background()
	const size = 16 << 20
	// What an earlier process left in the pool's directory goes.
	stale := filepath.Join(ts.runDir, poolDirName, "7.ext4")
	if err := os.MkdirAll(filepath.Dir(stale), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, []byte("not a disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ts.StartDiskPool(ctx, size, 3, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := poolFiles(t, ts.Store); len(got) != 3 {
		t.Fatalf("pool after start holds %q, want 3 disks", got)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale pool file survived the start: %v", err)
	}
	if err := ts.StartDiskPool(ctx, size, 3, time.Second); !errors.Is(err, ErrConflict) {
		t.Fatalf("second StartDiskPool: %v, want ErrConflict", err)
	}

	// Concurrent creates of the pooled size take pooled disks (a usable
	// filesystem each, with a UUID of its own), and the pool refills.
	ids := []string{"sb-p1", "sb-p2"}
	roots := make([]*RootFS, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() { roots[i], errs[i] = ts.Prepare(ctx, id, "base", size, filepath.Join(ts.root, "sandboxes", id)) })
	}
	wg.Wait()
	uuids := map[string]bool{}
	for i, r := range roots {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if err := os.WriteFile(filepath.Join(r.Path(), "written"), []byte("x"), 0o644); err != nil {
			t.Fatalf("write in %s: %v", ids[i], err)
		}
		uuids[ext4UUID(t, filepath.Join(r.dir, diskFile))] = true
	}
	if len(uuids) != len(ids) {
		t.Errorf("pooled disks share a filesystem UUID")
	}
	waitPool(t, ts.Store, 3)

	// Another size is formatted on the spot; the pool is not touched.
	before := strings.Join(poolFiles(t, ts.Store), ",")
	other, err := ts.Prepare(ctx, "sb-other", "base", 32<<20, filepath.Join(ts.root, "sandboxes", "sb-other"))
	if err != nil {
		t.Fatal(err)
	}
	if after := strings.Join(poolFiles(t, ts.Store), ","); after != before {
		t.Errorf("pool changed by a create of another size: %s → %s", before, after)
	}
	if fi, err := os.Stat(filepath.Join(other.dir, diskFile)); err != nil || fi.Size() != 32<<20 {
		t.Errorf("disk of another size: %v %v", fi, err)
	}

	// Close empties the pool; creates keep working without it.
	if err := ts.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(ts.runDir, poolDirName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pool directory left after Close: %v", err)
	}
	late, err := ts.Prepare(ctx, "sb-late", "base", size, filepath.Join(ts.root, "sandboxes", "sb-late"))
	if err != nil {
		t.Fatalf("Prepare after Close: %v", err)
	}
	for _, r := range append(roots, other, late) {
		if err := r.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDiskPoolCloseDuringRefill(t *testing.T) {
	t.Parallel()
	ts := newTestStore(t)
	ctx := context.Background()
	// No warm-up: the whole pool fills in the background, and Close must
	// stop that and leave no file behind.
	if err := ts.StartDiskPool(ctx, 16<<20, 50, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if err := ts.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(ts.runDir, poolDirName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pool directory left after Close: %v", err)
	}
	if err := ts.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestDiskPoolRejects(t *testing.T) {
	t.Parallel()
	s, err := NewStore(t.TempDir(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		size uint64
		n    int
	}{
		{"negative size", 16 << 20, -1},
		{"tiny disks", 4096, 2},
	} {
		if err := s.StartDiskPool(context.Background(), tt.size, tt.n, time.Second); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", tt.name, err)
		}
	}
	// Zero turns the pool off: nothing is made.
	if err := s.StartDiskPool(context.Background(), 16<<20, 0, time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.runDir, poolDirName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pool directory made for a pool of 0: %v", err)
	}
}

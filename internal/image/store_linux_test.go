package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func requireRootTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices and mounts")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("needs /dev/loop-control: %v", err)
	}
	fs, _ := os.ReadFile("/proc/filesystems")
	if !bytes.Contains(fs, []byte("\toverlay\n")) {
		t.Skip("needs overlayfs in the kernel")
	}
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "resize2fs"} {
		if err := findTool(tool); err != nil {
			t.Skipf("needs %s (e2fsprogs): %v", tool, err)
		}
	}
}

func findTool(tool string) error {
	if _, err := exec.LookPath(tool); err == nil {
		return nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		if _, err := os.Stat(filepath.Join(d, tool)); err == nil {
			return nil
		}
	}
	return errors.New("not found")
}

// testStore is a Store over a scratch directory holding one template,
// "base", built from a small tree.
type testStore struct {
	*Store
	root string
}

func newTestStore(t *testing.T) *testStore {
	t.Helper()
	requireRootTools(t)
	root := t.TempDir()
	tree := filepath.Join(root, "tree")
	for path, content := range map[string]string{
		"etc/hostname":     "template\n",
		"bin/hello":        "#!/bin/sh\necho hello\n",
		"home/user/notes":  "from the template\n",
		"var/lib/empty/.k": "",
	} {
		p := filepath.Join(tree, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s, err := NewStore(filepath.Join(root, "images"), filepath.Join(root, "run"), nil)
	if err != nil {
		t.Fatal(err)
	}
	makeTemplate(t, s, "base", tree)
	ts := &testStore{Store: s, root: root}
	// Runs before TempDir's removal (cleanups are LIFO), so a failed test
	// never leaves mounts for RemoveAll to walk into.
	t.Cleanup(func() {
		fresh, err := NewStore(s.imagesDir, s.runDir, nil)
		if err != nil {
			t.Error(err)
			return
		}
		if err := fresh.CleanupOrphans(context.Background(), nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		assertNothingUnder(t, root)
	})
	return ts
}

func makeTemplate(t *testing.T, s *Store, name, tree string) {
	t.Helper()
	p := s.TemplatePath(name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mkfs.ext4", "-q", "-b", "4096", "-d", tree, p, "32M").CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4 -d: %v: %s", err, out)
	}
}

// assertNothingUnder fails if any mount or loop device refers to root.
func assertNothingUnder(t *testing.T, root string) {
	t.Helper()
	mounts, err := readMounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if strings.HasPrefix(m.Mountpoint, root+"/") {
			t.Errorf("mount left at %s (%s)", m.Mountpoint, m.FSType)
		}
	}
	entries, _ := os.ReadDir("/sys/block")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/sys/block", e.Name(), "loop", "backing_file"))
		if err == nil && strings.HasPrefix(string(b), root+"/") {
			t.Errorf("loop device %s still bound to %s", e.Name(), strings.TrimSpace(string(b)))
		}
	}
}

// assertDirEmpty fails unless dir is missing or holds only want.
func assertDirHolds(t *testing.T, dir string, want ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) && len(want) == 0 {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("%s holds %q, want %q", dir, got, want)
	}
}

func (ts *testStore) templateMounted(t *testing.T) bool {
	t.Helper()
	mounts, err := readMounts()
	if err != nil {
		t.Fatal(err)
	}
	_, ok := mountAt(mounts, ts.templateMount("base"))
	return ok
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestPrepareGivesIsolatedCopies(t *testing.T) {
	t.Parallel()
	ts := newTestStore(t)
	ctx := context.Background()
	templateSum := fileSum(t, ts.TemplatePath("base"))

	ids := []string{"sb-one", "sb-two"}
	roots := make([]*RootFS, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			roots[i], errs[i] = ts.Prepare(ctx, id, "base", 64<<20, filepath.Join(ts.root, "sandboxes", id))
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	one, two := roots[0], roots[1]
	if got := readString(t, filepath.Join(two.Path(), "home/user/notes")); got != "from the template\n" {
		t.Fatalf("template file reads %q", got)
	}

	// Change, add and delete in one; the other and the template see none of it.
	if err := os.WriteFile(filepath.Join(one.Path(), "etc/hostname"), []byte("one\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(one.Path(), "new-file"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(one.Path(), "bin/hello")); err != nil {
		t.Fatal(err)
	}
	if got := readString(t, filepath.Join(one.Path(), "etc/hostname")); got != "one\n" {
		t.Errorf("own write reads back %q", got)
	}
	for _, base := range []string{two.Path(), ts.templateMount("base")} {
		if got := readString(t, filepath.Join(base, "etc/hostname")); got != "template\n" {
			t.Errorf("%s sees %q", base, got)
		}
		if _, err := os.Stat(filepath.Join(base, "new-file")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s sees the other sandbox's new file: %v", base, err)
		}
		if _, err := os.Stat(filepath.Join(base, "bin/hello")); err != nil {
			t.Errorf("%s lost a file the other sandbox deleted: %v", base, err)
		}
	}
	// The template's mount is read-only.
	if err := os.WriteFile(filepath.Join(ts.templateMount("base"), "x"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write into the template mount: %v, want EROFS", err)
	}

	// The shared template mount lives exactly as long as its last user.
	if err := one.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := one.Release(ctx); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if !ts.templateMounted(t) {
		t.Fatal("template unmounted while a sandbox still uses it")
	}
	if got := readString(t, filepath.Join(two.Path(), "etc/hostname")); got != "template\n" {
		t.Errorf("remaining sandbox reads %q", got)
	}
	if err := two.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if ts.templateMounted(t) {
		t.Error("template still mounted after its last user released it")
	}
	assertNothingUnder(t, ts.root)
	for _, id := range ids {
		assertDirHolds(t, filepath.Join(ts.root, "sandboxes", id))
	}
	assertDirHolds(t, filepath.Join(ts.runDir, "sandboxes"))
	assertDirHolds(t, filepath.Join(ts.runDir, "templates"))
	if fileSum(t, ts.TemplatePath("base")) != templateSum {
		t.Error("template image changed")
	}
}

func TestFullDiskIsENOSPCInsideOnly(t *testing.T) {
	t.Parallel()
	ts := newTestStore(t)
	ctx := context.Background()
	small, err := ts.Prepare(ctx, "sb-small", "base", 16<<20, filepath.Join(ts.root, "small"))
	if err != nil {
		t.Fatal(err)
	}
	defer small.Release(ctx)
	big, err := ts.Prepare(ctx, "sb-big", "base", 64<<20, filepath.Join(ts.root, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer big.Release(ctx)

	f, err := os.Create(filepath.Join(small.Path(), "fill"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{0xa5}, 1<<20)
	var werr error
	written := 0
	for written < 64<<20 {
		var n int
		n, werr = f.Write(chunk)
		written += n
		if werr != nil {
			break
		}
	}
	if werr == nil {
		werr = f.Sync()
	}
	_ = f.Close()
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("filling a 16 MiB disk: wrote %d bytes, err %v; want ENOSPC", written, werr)
	}
	if written > 16<<20 {
		t.Errorf("wrote %d bytes into a 16 MiB disk", written)
	}
	// The other sandbox and the host are unaffected.
	if err := os.WriteFile(filepath.Join(big.Path(), "fine"), bytes.Repeat([]byte{1}, 4<<20), 0o644); err != nil {
		t.Errorf("other sandbox cannot write: %v", err)
	}
	if err := os.WriteFile(filepath.Join(ts.root, "host-file"), []byte("ok"), 0o644); err != nil {
		t.Errorf("host cannot write: %v", err)
	}
	for _, r := range []*RootFS{small, big} {
		if err := r.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	assertNothingUnder(t, ts.root)
}

func TestPrepareFailuresLeaveNothing(t *testing.T) {
	t.Parallel()
	ts := newTestStore(t)
	ctx := context.Background()

	// An image file that is not ext4: fails at the template mount.
	broken := ts.TemplatePath("broken")
	if err := os.MkdirAll(filepath.Dir(broken), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(broken, bytes.Repeat([]byte("not ext4"), 1<<17), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(ts.root, "sb-broken")
	if _, err := ts.Prepare(ctx, "sb-broken", "broken", 16<<20, dir); err == nil {
		t.Fatal("Prepare on a broken template succeeded")
	}
	assertNothingUnder(t, ts.root)
	assertDirHolds(t, dir)
	assertDirHolds(t, filepath.Join(ts.runDir, "sandboxes"))
	assertDirHolds(t, filepath.Join(ts.runDir, "templates"))

	// Late failure: the overlay mountpoint is taken by a file, after the
	// template and the disk are already mounted.
	dir = filepath.Join(ts.root, "sb-late")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, rootfsName), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Prepare(ctx, "sb-late", "base", 16<<20, dir); err == nil {
		t.Fatal("Prepare with a blocked mountpoint succeeded")
	}
	assertNothingUnder(t, ts.root)
	assertDirHolds(t, dir, rootfsName)
	assertDirHolds(t, filepath.Join(ts.runDir, "sandboxes"))
	assertDirHolds(t, filepath.Join(ts.runDir, "templates"))

	// Arguments refused before anything happens.
	for _, tc := range []struct {
		id, tmpl string
		size     uint64
		dir      string
		want     error
	}{
		{"sb-x", "missing", 16 << 20, filepath.Join(ts.root, "x"), ErrNotFound},
		{"sb-x", "../base", 16 << 20, filepath.Join(ts.root, "x"), ErrInvalid},
		{"sb-x", "base", 1 << 20, filepath.Join(ts.root, "x"), ErrInvalid},
		{"sb/x", "base", 16 << 20, filepath.Join(ts.root, "x"), ErrInvalid},
		{"sb-x", "base", 16 << 20, "relative", ErrInvalid},
		{"sb-x", "base", 16 << 20, ts.root + "/a,b", ErrInvalid},
	} {
		if _, err := ts.Prepare(ctx, tc.id, tc.tmpl, tc.size, tc.dir); !errors.Is(err, tc.want) {
			t.Errorf("Prepare(%q, %q, %d, %q) = %v, want %v", tc.id, tc.tmpl, tc.size, tc.dir, err, tc.want)
		}
	}
	assertNothingUnder(t, ts.root)

	// The same sandbox twice is a conflict, and the first stays intact.
	r, err := ts.Prepare(ctx, "sb-dup", "base", 16<<20, filepath.Join(ts.root, "dup"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Prepare(ctx, "sb-dup", "base", 16<<20, filepath.Join(ts.root, "dup2")); !errors.Is(err, ErrConflict) {
		t.Errorf("second Prepare of one sandbox = %v, want ErrConflict", err)
	}
	if got := readString(t, filepath.Join(r.Path(), "etc/hostname")); got != "template\n" {
		t.Errorf("first root reads %q", got)
	}
	if err := r.Release(ctx); err != nil {
		t.Fatal(err)
	}
	assertNothingUnder(t, ts.root)
}

func TestAdoptAndCleanupOrphansAfterRestart(t *testing.T) {
	t.Parallel()
	ts := newTestStore(t)
	ctx := context.Background()
	dirs := map[string]string{}
	for _, id := range []string{"sb-keep", "sb-gone1", "sb-gone2"} {
		dirs[id] = filepath.Join(ts.root, "sandboxes", id)
		r, err := ts.Prepare(ctx, id, "base", 16<<20, dirs[id])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(r.Path(), "mark"), []byte(id), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// The agent restarts: a new Store knows only what it adopts.
	s2, err := NewStore(ts.imagesDir, ts.runDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Kept but not adopted yet: cleanup must leave them and their template
	// alone, even though overlays do not make the template mount busy.
	all := map[string]bool{"sb-keep": true, "sb-gone1": true, "sb-gone2": true}
	if err := s2.CleanupOrphans(ctx, all); err != nil {
		t.Fatal(err)
	}
	if !ts.templateMounted(t) {
		t.Fatal("cleanup unmounted a template that kept sandboxes use")
	}
	for id, dir := range dirs {
		if got := readString(t, filepath.Join(dir, rootfsName, "mark")); got != id {
			t.Errorf("%s reads %q after cleanup", id, got)
		}
	}
	if _, err := s2.Adopt(ctx, "sb-gone1", "base", filepath.Join(ts.root, "nowhere")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Adopt of an unmounted dir = %v, want ErrNotFound", err)
	}
	kept, err := s2.Adopt(ctx, "sb-keep", "base", dirs["sb-keep"])
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.CleanupOrphans(ctx, map[string]bool{"sb-keep": true}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"sb-gone1", "sb-gone2"} {
		assertDirHolds(t, dirs[id])
	}
	if got := readString(t, filepath.Join(kept.Path(), "mark")); got != "sb-keep" {
		t.Errorf("kept sandbox reads %q", got)
	}
	if !ts.templateMounted(t) {
		t.Fatal("cleanup unmounted the template the kept sandbox uses")
	}
	// The adopted sandbox is the template's only user now.
	if err := kept.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if ts.templateMounted(t) {
		t.Error("template still mounted after the adopted sandbox released it")
	}
	assertNothingUnder(t, ts.root)
	assertDirHolds(t, filepath.Join(ts.runDir, "sandboxes"))

	// A template mount nobody uses (left by a crash) is cleaned up too.
	s3, err := NewStore(ts.imagesDir, ts.runDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s3.acquire("base", false); err != nil {
		t.Fatal(err)
	}
	s4, err := NewStore(ts.imagesDir, ts.runDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s4.CleanupOrphans(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if ts.templateMounted(t) {
		t.Error("orphan template mount survived cleanup")
	}
	assertNothingUnder(t, ts.root)
}

func TestEnsureSizeAndShrink(t *testing.T) {
	t.Parallel()
	ts := newTestStore(t)
	ctx := context.Background()
	path := ts.TemplatePath("base")
	size := func() (file, fs uint64) {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		n, err := ext4Size(f)
		if err != nil {
			t.Fatal(err)
		}
		return uint64(fi.Size()), n
	}

	if err := ts.EnsureSize(ctx, "base", 96<<20); err != nil {
		t.Fatal(err)
	}
	if file, fs := size(); file != 96<<20 || fs != 96<<20 {
		t.Errorf("after EnsureSize file %d fs %d, want both %d", file, fs, 96<<20)
	}
	// Already large enough: nothing changes.
	if err := ts.EnsureSize(ctx, "base", 64<<20); err != nil {
		t.Fatal(err)
	}
	if file, _ := size(); file != 96<<20 {
		t.Errorf("EnsureSize to a smaller size changed the file to %d", file)
	}

	r, err := ts.Prepare(ctx, "sb-user", "base", 16<<20, filepath.Join(ts.root, "user"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.EnsureSize(ctx, "base", 128<<20); !errors.Is(err, ErrBusy) {
		t.Errorf("EnsureSize while in use = %v, want ErrBusy", err)
	}
	if err := ts.Shrink(ctx, "base"); !errors.Is(err, ErrBusy) {
		t.Errorf("Shrink while in use = %v, want ErrBusy", err)
	}
	if err := r.Release(ctx); err != nil {
		t.Fatal(err)
	}

	if err := ts.Shrink(ctx, "base"); err != nil {
		t.Fatal(err)
	}
	file, fs := size()
	if file != fs || file >= 32<<20 {
		t.Errorf("after Shrink file %d fs %d, want equal and below the original 32 MiB", file, fs)
	}
	// Contents survive both resizes.
	r, err = ts.Prepare(ctx, "sb-after", "base", 16<<20, filepath.Join(ts.root, "after"))
	if err != nil {
		t.Fatal(err)
	}
	if got := readString(t, filepath.Join(r.Path(), "home/user/notes")); got != "from the template\n" {
		t.Errorf("after resizes the template reads %q", got)
	}
	if err := r.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ts.EnsureSize(ctx, "missing", 1<<30); !errors.Is(err, ErrNotFound) {
		t.Errorf("EnsureSize of a missing template = %v, want ErrNotFound", err)
	}
	assertNothingUnder(t, ts.root)
}

func TestConcurrentPrepareRelease(t *testing.T) {
	t.Parallel()
	ts := newTestStore(t)
	ctx := context.Background()
	// Several rounds, so the template is mounted and unmounted repeatedly
	// while other sandboxes come and go.
	for round := range 3 {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := range 8 {
			wg.Go(func() {
				id := "sb-r" + string(rune('0'+round)) + "-" + string(rune('a'+i))
				r, err := ts.Prepare(ctx, id, "base", 16<<20, filepath.Join(ts.root, "sandboxes", id))
				if err != nil {
					errs <- err
					return
				}
				if err := os.WriteFile(filepath.Join(r.Path(), "id"), []byte(id), 0o644); err != nil {
					errs <- err
				}
				if b, err := os.ReadFile(filepath.Join(r.Path(), "etc/hostname")); err != nil || string(b) != "template\n" {
					errs <- errors.Join(errors.New("template content wrong in "+id), err)
				}
				if err := r.Release(ctx); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if ts.templateMounted(t) {
			t.Errorf("round %d: template still mounted after every sandbox released it", round)
		}
		assertNothingUnder(t, ts.root)
	}
}

func BenchmarkPrepareRelease(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	root := b.TempDir()
	tree := filepath.Join(root, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "etc"), 0o755); err != nil {
		b.Fatal(err)
	}
	s, err := NewStore(filepath.Join(root, "images"), filepath.Join(root, "run"), nil)
	if err != nil {
		b.Fatal(err)
	}
	p := s.TemplatePath("base")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-b", "4096", "-d", tree, p, "32M").CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	ctx := context.Background()
	// Keep one user so the template mount is shared, as in steady state.
	keep, err := s.Prepare(ctx, "sb-keep", "base", 64<<20, filepath.Join(root, "keep"))
	if err != nil {
		b.Fatal(err)
	}
	defer keep.Release(ctx)
	for b.Loop() {
		r, err := s.Prepare(ctx, "sb-bench", "base", 1<<30, filepath.Join(root, "bench"))
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Release(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

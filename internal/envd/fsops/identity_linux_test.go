package fsops

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Ids no account on a test machine uses.
const (
	testUID   = 54321
	testGID   = 54322
	testGroup = 54323 // a supplementary group of testUID
)

// identityTree is a root-owned tree: private/ (0700, root only), shared/
// (0777), group/ (0070, group testGroup only), each holding a file.
func identityTree(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to act as another user")
	}
	root := t.TempDir()
	// The test's temporary directories are root's alone; open the way in.
	for _, p := range []string{filepath.Dir(root), root} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []struct {
		name string
		mode os.FileMode
		gid  int
	}{{"private", 0o700, 0}, {"shared", 0o777, 0}, {"group", 0o070, testGroup}} {
		p := filepath.Join(root, d.name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "f"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, 0, d.gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, d.mode); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestAsChecksTheUsersPermissions(t *testing.T) {
	t.Parallel()
	root := identityTree(t)
	user := &Identity{UID: testUID, GID: testGID, Groups: []uint32{testGID}}
	member := &Identity{UID: testUID, GID: testGID, Groups: []uint32{testGID, testGroup}}
	private := filepath.Join(root, "private")
	tests := []struct {
		name string
		id   *Identity
		op   func() error
		want error // nil: must succeed
	}{
		{"stat into a private dir", user, func() error { _, err := Stat(filepath.Join(private, "f")); return err }, os.ErrPermission},
		{"list a private dir", user, func() error { _, err := ListDir(private, 1); return err }, os.ErrPermission},
		{"make a dir in a private dir", user, func() error { _, err := MakeDir(filepath.Join(private, "d")); return err }, os.ErrPermission},
		{"move out of a private dir", user, func() error {
			_, err := Move(filepath.Join(private, "f"), filepath.Join(root, "shared", "stolen"))
			return err
		}, os.ErrPermission},
		{"remove from a private dir", user, func() error { return Remove(filepath.Join(private, "f")) }, os.ErrPermission},
		{"open a file in a private dir", user, func() error {
			f, err := os.Open(filepath.Join(private, "f"))
			if err == nil {
				f.Close()
			}
			return err
		}, os.ErrPermission},
		{"list a group dir without the group", user, func() error { _, err := ListDir(filepath.Join(root, "group"), 1); return err }, os.ErrPermission},
		{"list a group dir as a member", member, func() error { _, err := ListDir(filepath.Join(root, "group"), 1); return err }, nil},
		{"root lists a private dir", nil, func() error { _, err := ListDir(private, 1); return err }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := Run(tt.id, tt.op)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("got %v, want success", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(private, "f")); err != nil {
		t.Errorf("the private file is gone: %v", err)
	}
}

// TestAsOwnsWhatItCreates: what an operation creates as a user belongs to
// that user, parents included.
func TestAsOwnsWhatItCreates(t *testing.T) {
	t.Parallel()
	root := identityTree(t)
	id := &Identity{UID: testUID, GID: testGID}
	shared := filepath.Join(root, "shared")
	if _, err := As(id, func() (Entry, error) { return MakeDir(filepath.Join(shared, "a/b")) }); err != nil {
		t.Fatalf("MakeDir as the user: %v", err)
	}
	f, err := As(id, func() (*os.File, error) {
		return os.OpenFile(filepath.Join(shared, "a/b/file"), os.O_WRONLY|os.O_CREATE, 0o644)
	})
	if err != nil {
		t.Fatalf("create as the user: %v", err)
	}
	// The descriptor outlives the user's thread.
	if _, err := f.WriteString("data"); err != nil {
		t.Fatalf("write through the user's descriptor: %v", err)
	}
	f.Close()
	for _, p := range []string{"a", "a/b", "a/b/file"} {
		e, err := Stat(filepath.Join(shared, p))
		if err != nil {
			t.Fatal(err)
		}
		if e.UID != testUID || e.GID != testGID {
			t.Errorf("%s owned by %d:%d, want %d:%d", p, e.UID, e.GID, testUID, testGID)
		}
	}
}

// TestAsLeavesOtherThreadsRoot runs many operations as a user while other
// goroutines do what only root may: no other thread ever takes the user's
// identity, and the user's threads do not pile up.
func TestAsLeavesOtherThreadsRoot(t *testing.T) {
	root := identityTree(t)
	private := filepath.Join(root, "private")
	id := &Identity{UID: testUID, GID: testGID}
	threadsBefore := threads(t)
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for range 200 {
		wg.Go(func() {
			if _, err := As(id, func() (Entry, error) { return Stat(filepath.Join(private, "f")) }); !errors.Is(err, os.ErrPermission) {
				errs <- err
			}
		})
		wg.Go(func() {
			if _, err := Stat(filepath.Join(private, "f")); err != nil {
				errs <- err
			}
			if uid := syscall.Geteuid(); uid != 0 {
				errs <- errors.New("a goroutine ran with a user's effective uid")
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The main thread cannot end, so it must never take a user's identity.
	status, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/status", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), "\nUid:\t0\t0\t0\t0\n") {
		t.Errorf("the main thread's ids changed:\n%s", status)
	}
	if after := threads(t); after > threadsBefore+20 {
		t.Errorf("%d threads after 200 operations as a user, %d before: the user's threads are not ending", after, threadsBefore)
	}
}

func threads(t *testing.T) int {
	t.Helper()
	des, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	return len(des)
}

// BenchmarkStatAs is the cost of one operation as a user (a thread started
// and ended) beside the same operation as envd.
func BenchmarkStatAs(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("skipping: needs root to act as another user")
	}
	for _, bc := range []struct {
		name string
		id   *Identity
	}{{"envd", nil}, {"user", &Identity{UID: testUID, GID: testGID}}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := As(bc.id, func() (Entry, error) { return Stat("/") }); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

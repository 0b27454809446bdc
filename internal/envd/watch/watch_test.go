package watch

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// expect reads events until want arrived in order (other events may come
// in between, as inotify reports more detail than callers ask about).
func expect(t *testing.T, w *Watcher, want ...Event) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	var got []Event
	for len(want) > 0 {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatalf("events closed; still waiting for %v (got %v)", want, got)
			}
			got = append(got, ev)
			if ev.Name == want[0].Name && ev.Op == want[0].Op {
				want = want[1:]
			}
		case <-timeout:
			t.Fatalf("timed out waiting for %v; got %v", want, got)
		}
	}
}

func newWatcher(t *testing.T, dir string, recursive bool) *Watcher {
	t.Helper()
	w, err := New(dir, recursive)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

func TestEvents(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	w := newWatcher(t, dir, false)
	f := filepath.Join(dir, "f")
	must(t, os.WriteFile(f, []byte("x"), 0o644))
	expect(t, w, Event{Name: "f", Op: Create}, Event{Name: "f", Op: Write})
	must(t, os.Chmod(f, 0o600))
	expect(t, w, Event{Name: "f", Op: Chmod})
	must(t, os.Rename(f, filepath.Join(dir, "g")))
	expect(t, w, Event{Name: "f", Op: Rename}, Event{Name: "g", Op: Create})
	must(t, os.Remove(filepath.Join(dir, "g")))
	expect(t, w, Event{Name: "g", Op: Remove})
}

func TestRecursive(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "old/deep"), 0o755))
	rec := newWatcher(t, dir, true)
	flat := newWatcher(t, dir, false)

	must(t, os.WriteFile(filepath.Join(dir, "old/deep/a"), nil, 0o644))
	expect(t, rec, Event{Name: "old/deep/a", Op: Create})
	// A directory made after the start is watched too.
	must(t, os.Mkdir(filepath.Join(dir, "new"), 0o755))
	expect(t, rec, Event{Name: "new", Op: Create})
	time.Sleep(50 * time.Millisecond) // the watch on new/ is added by the reader
	must(t, os.WriteFile(filepath.Join(dir, "new/b"), nil, 0o644))
	expect(t, rec, Event{Name: "new/b", Op: Create})

	// The flat watcher saw the new directory but nothing below.
	must(t, os.WriteFile(filepath.Join(dir, "top"), nil, 0o644))
	expect(t, flat, Event{Name: "new", Op: Create}, Event{Name: "top", Op: Create})
	select {
	case ev := <-flat.Events():
		t.Fatalf("flat watcher reported %v", ev)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestRootRemovedEndsWatch(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "w")
	must(t, os.Mkdir(dir, 0o755))
	w := newWatcher(t, dir, false)
	must(t, os.Remove(dir))
	timeout := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-w.Events():
			if !ok {
				return
			}
		case <-timeout:
			t.Fatal("watch did not end when its directory went away")
		}
	}
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "file"), nil, 0o644))
	if _, err := New(filepath.Join(dir, "file"), false); !errors.Is(err, ErrInvalid) {
		t.Errorf("watch a file: %v", err)
	}
	if _, err := New(filepath.Join(dir, "missing"), false); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("watch missing: %v", err)
	}
}

// Not parallel: counts the process's descriptors.
func TestCloseReleasesDescriptor(t *testing.T) {
	before := fds(t)
	for range 20 {
		w, err := New(t.TempDir(), true)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		for range w.Events() {
		}
	}
	if after := fds(t); after > before {
		t.Fatalf("%d descriptors open, %d before", after, before)
	}
}

func fds(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(es)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

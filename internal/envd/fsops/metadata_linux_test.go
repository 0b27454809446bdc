package fsops

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMetadata(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stat := func(path string) map[string]string {
		t.Helper()
		e, err := Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return e.Metadata
	}
	if md := stat(p); md != nil {
		t.Fatalf("new file has metadata %v", md)
	}

	if err := ReplaceMetadata(f, map[string]string{"author": "alice", "empty": ""}); err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			t.Skipf("%s has no user extended attributes: %v", dir, err)
		}
		t.Fatal(err)
	}
	if got, want := stat(p), map[string]string{"author": "alice", "empty": ""}; !reflect.DeepEqual(got, want) {
		t.Fatalf("metadata = %v, want %v", got, want)
	}
	// Attributes set in the sandbox by other tools: user.e2b.* is metadata,
	// the rest is not.
	if err := unix.Setxattr(p, "user.e2b.tool", []byte("setfattr"), 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(p, "user.other", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if got, want := stat(p), map[string]string{"author": "alice", "empty": "", "tool": "setfattr"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("metadata = %v, want %v", got, want)
	}

	// Replacing keeps only the new keys, and leaves other attributes alone.
	if err := ReplaceMetadata(f, map[string]string{"author": "bob"}); err != nil {
		t.Fatal(err)
	}
	if got, want := stat(p), map[string]string{"author": "bob"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after replace: metadata = %v, want %v", got, want)
	}
	if v, err := unix.Getxattr(p, "user.other", make([]byte, 8)); err != nil || v != 1 {
		t.Fatalf("user.other after replace: %d, %v", v, err)
	}
	if err := ReplaceMetadata(f, nil); err != nil {
		t.Fatal(err)
	}
	if md := stat(p); md != nil {
		t.Fatalf("after replace with nothing: metadata %v", md)
	}

	// Too long a key changes nothing.
	if err := ReplaceMetadata(f, map[string]string{"ok": "1"}); err != nil {
		t.Fatal(err)
	}
	err = ReplaceMetadata(f, map[string]string{strings.Repeat("k", MaxMetadataKey+1): "v"})
	if !errors.Is(err, ErrMetadata) {
		t.Fatalf("overlong key: %v, want ErrMetadata", err)
	}
	if got := stat(p); !reflect.DeepEqual(got, map[string]string{"ok": "1"}) {
		t.Fatalf("refused replace changed the metadata to %v", got)
	}
	// A value the filesystem cannot hold (ext4 keeps a file's attributes
	// in one block) undoes the keys set before it, whichever order the map
	// gives them in.
	for range 10 {
		err := ReplaceMetadata(f, map[string]string{"ok": "2", "new": "x", "big": strings.Repeat("v", 64<<10)})
		if !errors.Is(err, ErrMetadata) {
			t.Fatalf("oversized value: %v, want ErrMetadata", err)
		}
		if got := stat(p); !reflect.DeepEqual(got, map[string]string{"ok": "1"}) {
			t.Fatalf("refused replace changed the metadata to %v", got)
		}
	}
	// The longest key fits.
	long := strings.Repeat("k", MaxMetadataKey)
	if err := ReplaceMetadata(f, map[string]string{long: "v"}); err != nil {
		t.Fatalf("key of %d bytes: %v", len(long), err)
	}

	// Directories carry metadata too (set out of band here) and ListDir
	// reports it; symlinks never do.
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(sub, "user.e2b.kind", []byte("dir"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("f", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	entries, err := ListDir(dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]string{}
	for _, e := range entries {
		got[e.Name] = e.Metadata
	}
	want := map[string]map[string]string{"f": {long: "v"}, "sub": {"kind": "dir"}, "link": nil}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ListDir metadata = %v, want %v", got, want)
	}
}

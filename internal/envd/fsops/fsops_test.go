package fsops

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func tree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"a/b/c/d", "e"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"a/f1", "a/b/f2", "a/b/c/f3", "a/b/c/d/f4"} {
		if err := os.WriteFile(filepath.Join(root, f), []byte(f), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	// A loop: following it would never end.
	if err := os.Symlink("..", filepath.Join(root, "a/b/up")); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestStat(t *testing.T) {
	t.Parallel()
	root := tree(t)
	tests := []struct {
		path    string
		typ     Type
		perm    string
		target  string
		size    int64
		wantErr error
	}{
		{path: "a/f1", typ: TypeFile, perm: "-rw-r-----", size: 4},
		{path: "a", typ: TypeDir, perm: "drwxr-xr-x"},
		{path: "a/b/up", typ: TypeSymlink, target: ".."},
		{path: "nope", wantErr: os.ErrNotExist},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			t.Parallel()
			e, err := Stat(filepath.Join(root, tc.path))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Stat error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e.Type != tc.typ || e.Name != filepath.Base(tc.path) || e.Path != filepath.Join(root, tc.path) || e.SymlinkTarget != tc.target {
				t.Fatalf("Stat = %+v", e)
			}
			if tc.perm != "" && e.Permissions != tc.perm {
				t.Fatalf("permissions %q, want %q", e.Permissions, tc.perm)
			}
			if tc.typ == TypeFile && (e.Size != tc.size || e.Mode != 0o640) {
				t.Fatalf("size %d mode %o", e.Size, e.Mode)
			}
			if e.Modified.IsZero() || int(e.UID) != os.Geteuid() {
				t.Fatalf("modified %v uid %d", e.Modified, e.UID)
			}
		})
	}
}

func TestListDirDepth(t *testing.T) {
	t.Parallel()
	root := tree(t)
	rel := func(es []Entry) []string {
		var out []string
		for _, e := range es {
			out = append(out, strings.TrimPrefix(e.Path, root+"/"))
		}
		return out
	}
	tests := []struct {
		depth int
		want  []string
	}{
		{0, []string{"a/b", "a/f1"}},
		{1, []string{"a/b", "a/f1"}},
		{2, []string{"a/b", "a/b/c", "a/b/f2", "a/b/up", "a/f1"}},
		{9, []string{"a/b", "a/b/c", "a/b/c/d", "a/b/c/d/f4", "a/b/c/f3", "a/b/f2", "a/b/up", "a/f1"}},
	}
	for _, tc := range tests {
		es, err := ListDir(filepath.Join(root, "a"), tc.depth)
		if err != nil {
			t.Fatal(err)
		}
		if got := rel(es); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("depth %d: %v, want %v", tc.depth, got, tc.want)
		}
	}
	if _, err := ListDir(filepath.Join(root, "a/f1"), 1); !errors.Is(err, ErrInvalid) {
		t.Errorf("list a file: %v", err)
	}
	if _, err := ListDir(filepath.Join(root, "nope"), 1); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("list missing: %v", err)
	}
}

func TestMakeDir(t *testing.T) {
	t.Parallel()
	root := tree(t)
	e, err := MakeDir(filepath.Join(root, "x/y/z"))
	if err != nil {
		t.Fatal(err)
	}
	if e.Type != TypeDir || e.Name != "z" {
		t.Fatalf("MakeDir = %+v", e)
	}
	if _, err := MakeDir(filepath.Join(root, "x/y/z")); !errors.Is(err, os.ErrExist) {
		t.Errorf("again: %v, want ErrExist", err)
	}
	if _, err := MakeDir(filepath.Join(root, "a/f1")); !errors.Is(err, ErrInvalid) {
		t.Errorf("over a file: %v, want ErrInvalid", err)
	}
	if _, err := MakeDir(filepath.Join(root, "a/f1/sub")); !errors.Is(err, ErrInvalid) {
		t.Errorf("below a file: %v, want ErrInvalid", err)
	}
}

func TestMoveAndRemove(t *testing.T) {
	t.Parallel()
	root := tree(t)
	e, err := Move(filepath.Join(root, "a/f1"), filepath.Join(root, "new/dir/g1"))
	if err != nil {
		t.Fatal(err)
	}
	if e.Name != "g1" || e.Type != TypeFile || e.Size != 4 {
		t.Fatalf("Move = %+v", e)
	}
	if _, err := os.Stat(filepath.Join(root, "a/f1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("source still there: %v", err)
	}
	if _, err := Move(filepath.Join(root, "a/f1"), filepath.Join(root, "g")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("move missing: %v", err)
	}
	// Never replace an existing directory.
	if _, err := Move(filepath.Join(root, "a"), filepath.Join(root, "e")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("move over a directory: %v", err)
	}
	if err := Remove(filepath.Join(root, "e")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(root, "e")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("removed dir still there: %v", err)
	}
	if err := Remove(filepath.Join(root, "e")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("remove missing: %v", err)
	}
	if err := Remove("/"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("remove /: %v", err)
	}
}

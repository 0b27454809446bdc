package account

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const passwd = `# comment
root:x:0:0:root:/root:/bin/bash
broken line
bad:x:notanumber:0::/home/bad:/bin/sh
alice:x:1000:1000:Alice:/home/alice:/bin/bash
nohome:x:1001:1001:::/usr/sbin/nologin
`

const group = `root:x:0:
sudo:x:27:alice,bob
alice:x:1000:
docker:x:999:bob, alice
bad:x:zz:alice
`

func fixture(t *testing.T) Database {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"passwd": passwd, "group": group} {
		if err := os.WriteFile(filepath.Join(root, "etc", name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return Database{Root: root}
}

func TestLookup(t *testing.T) {
	t.Parallel()
	db := fixture(t)
	tests := []struct {
		name    string
		want    User
		wantErr error
	}{
		{name: "root", want: User{Name: "root", UID: 0, GID: 0, Groups: []uint32{0}, Home: "/root", Shell: "/bin/bash"}},
		{name: "alice", want: User{Name: "alice", UID: 1000, GID: 1000, Groups: []uint32{1000, 27, 999}, Home: "/home/alice", Shell: "/bin/bash"}},
		{name: "nohome", want: User{Name: "nohome", UID: 1001, GID: 1001, Groups: []uint32{1001}, Home: "/", Shell: "/usr/sbin/nologin"}},
		{name: "bad", wantErr: ErrUnknownUser},
		{name: "nobody-here", wantErr: ErrUnknownUser},
		{name: "", wantErr: ErrUnknownUser},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := db.Lookup(tc.name)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Lookup(%q) error = %v, want %v", tc.name, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Lookup(%q): %v", tc.name, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Lookup(%q) = %+v, want %+v", tc.name, got, tc.want)
			}
		})
	}
}

func TestUserEnv(t *testing.T) {
	t.Parallel()
	u := User{Name: "alice", Home: "/home/alice", Shell: "/bin/zsh"}
	want := []string{"HOME=/home/alice", "USER=alice", "LOGNAME=alice", "SHELL=/bin/zsh"}
	if got := u.Env(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Env() = %v, want %v", got, want)
	}
}

func FuzzFindPasswd(f *testing.F) {
	f.Add(passwd, "alice")
	f.Add("a:b:c", "a")
	f.Add("x:x:1:1::/h:/s\n", "x")
	f.Fuzz(func(t *testing.T, data, name string) {
		u, err := FindPasswd(strings.NewReader(data), name)
		if err != nil {
			return
		}
		if u.Name != name || u.Home == "" {
			t.Fatalf("FindPasswd returned %+v for %q", u, name)
		}
		if _, err := MemberGroups(strings.NewReader(data), name); err != nil {
			t.Fatalf("MemberGroups: %v", err)
		}
	})
}

func TestNames(t *testing.T) {
	t.Parallel()
	n, err := fixture(t).Names()
	if err != nil {
		t.Fatal(err)
	}
	if n.User(1000) != "alice" || n.User(0) != "root" || n.User(4242) != "4242" {
		t.Errorf("users: %q %q %q", n.User(1000), n.User(0), n.User(4242))
	}
	if n.Group(27) != "sudo" || n.Group(999) != "docker" || n.Group(7) != "7" {
		t.Errorf("groups: %q %q %q", n.Group(27), n.Group(999), n.Group(7))
	}
	empty, err := Database{Root: t.TempDir()}.Names()
	if err != nil || empty.User(0) != "0" {
		t.Fatalf("missing files: %v %q", err, empty.User(0))
	}
}

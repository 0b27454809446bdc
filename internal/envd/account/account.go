// Package account resolves sandbox users from /etc/passwd and /etc/group.
//
// envd reads these files itself rather than through os/user so the result is
// the same with and without cgo (tests run with -race, which enables cgo; the
// shipped binary is static) and so the parsers can be fuzzed.
package account

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrUnknownUser is returned (wrapped) when no passwd entry has the requested
// name; callers map it to an invalid-argument error for the client.
var ErrUnknownUser = errors.New("unknown user")

// User is what envd needs to run a process as someone: real ids, every group
// the user belongs to, and the values for HOME, USER, LOGNAME and SHELL.
type User struct {
	Name   string
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups, including GID
	Home   string
	Shell  string
}

// Env returns the identity variables a login would set for u.
func (u User) Env() []string {
	env := []string{"HOME=" + u.Home, "USER=" + u.Name, "LOGNAME=" + u.Name}
	if u.Shell != "" {
		env = append(env, "SHELL="+u.Shell)
	}
	return env
}

// Database reads users from the passwd and group files below Root ("/" when
// empty), so tests can point it at a fixture tree.
type Database struct {
	Root string
}

func (d Database) path(name string) string {
	root := d.Root
	if root == "" {
		root = "/"
	}
	return filepath.Join(root, "etc", name)
}

// Lookup returns the user called name with its supplementary groups.
func (d Database) Lookup(name string) (User, error) {
	if name == "" {
		return User{}, fmt.Errorf("look up user: %w: empty name", ErrUnknownUser)
	}
	pf, err := os.Open(d.path("passwd"))
	if err != nil {
		return User{}, fmt.Errorf("look up user %q: %w", name, err)
	}
	defer pf.Close()
	u, err := FindPasswd(pf, name)
	if err != nil {
		return User{}, fmt.Errorf("look up user %q: %w", name, err)
	}
	gf, err := os.Open(d.path("group"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			u.Groups = []uint32{u.GID}
			return u, nil
		}
		return User{}, fmt.Errorf("look up groups of %q: %w", name, err)
	}
	defer gf.Close()
	groups, err := MemberGroups(gf, name)
	if err != nil {
		return User{}, fmt.Errorf("look up groups of %q: %w", name, err)
	}
	u.Groups = appendUnique([]uint32{u.GID}, groups...)
	return u, nil
}

func appendUnique(dst []uint32, ids ...uint32) []uint32 {
next:
	for _, id := range ids {
		for _, have := range dst {
			if have == id {
				continue next
			}
		}
		dst = append(dst, id)
	}
	return dst
}

// FindPasswd scans passwd(5) lines for name. Malformed lines are skipped, as
// libc does, so one bad line cannot lock every user out.
func FindPasswd(r io.Reader, name string) (User, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		u, ok := parsePasswdLine(sc.Text())
		if ok && u.Name == name {
			return u, nil
		}
	}
	if err := sc.Err(); err != nil {
		return User{}, fmt.Errorf("read passwd: %w", err)
	}
	return User{}, ErrUnknownUser
}

func parsePasswdLine(line string) (User, bool) {
	if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
		return User{}, false
	}
	f := strings.Split(line, ":")
	if len(f) != 7 || f[0] == "" {
		return User{}, false
	}
	uid, err1 := strconv.ParseUint(f[2], 10, 32)
	gid, err2 := strconv.ParseUint(f[3], 10, 32)
	if err1 != nil || err2 != nil {
		return User{}, false
	}
	home := f[5]
	if home == "" {
		home = "/"
	}
	return User{Name: f[0], UID: uint32(uid), GID: uint32(gid), Home: home, Shell: f[6]}, true
}

// MemberGroups returns the ids of the group(5) entries that list name as a
// member, in file order.
func MemberGroups(r io.Reader, name string) ([]uint32, error) {
	var ids []uint32
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != 4 {
			continue
		}
		gid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			continue
		}
		for _, m := range strings.Split(f[3], ",") {
			if strings.TrimSpace(m) == name {
				ids = appendUnique(ids, uint32(gid))
				break
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read group: %w", err)
	}
	return ids, nil
}

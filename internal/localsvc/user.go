package localsvc

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// account is the unprivileged user a server runs as when the caller is root.
// A nil *account means "run as the caller".
type account struct {
	name     string
	uid, gid uint32
}

// serviceAccount returns nil when the caller is not root. As root it returns
// the postgres system user (installed with the postgresql package) or, when
// that is missing, a wrenn system user that it creates.
func serviceAccount() (*account, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "wrenn"} {
		if a, err := lookupAccount(name); err == nil {
			return a, nil
		}
	}
	out, err := exec.Command("useradd", "--system", "--user-group", "--no-create-home",
		"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "wrenn").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("create system user wrenn to run Postgres (it refuses root): %w: %s", err, out)
	}
	return lookupAccount("wrenn")
}

func lookupAccount(name string) (*account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("look up user %q: %w", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("uid of %q: %w", name, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("gid of %q: %w", name, err)
	}
	return &account{name: name, uid: uint32(uid), gid: uint32(gid)}, nil
}

// apply makes cmd run as the account.
func (a *account) apply(cmd *exec.Cmd) {
	if a == nil {
		return
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: a.uid, Gid: a.gid, NoSetGroups: true}
	// HOME of root is not readable by the account; tools look there for rc files.
	cmd.Env = append(os.Environ(), "HOME="+os.TempDir())
}

// chown gives path to the account.
func (a *account) chown(path string) error {
	if a == nil {
		return nil
	}
	if err := os.Chown(path, int(a.uid), int(a.gid)); err != nil {
		return fmt.Errorf("give %q to user %s: %w", path, a.name, err)
	}
	return nil
}

// makeTraversable adds search permission for others to dir and each of its
// parents that lacks it, so the account can reach a directory below them.
// Only the execute bit is added: listing stays refused. Test directories
// (t.TempDir) are created 0700 and need this.
func (a *account) makeTraversable(dir string) error {
	if a == nil {
		return nil
	}
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("stat %q: %w", d, err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("let user %s traverse %q: %w", a.name, d, err)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

package server

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/internal/testenv"
	fspb "github.com/wrenn/wrenn/proto/envd/filesystem"
	"github.com/wrenn/wrenn/proto/envd/filesystem/filesystemconnect"
)

func fsClient(url string) filesystemconnect.FilesystemClient {
	return filesystemconnect.NewFilesystemClient(http1Client(), url, connect.WithProtoJSON())
}

func TestFilesystem(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	c := fsClient(e.url)
	ctx := context.Background()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "file.txt"), []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}

	st, err := c.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: filepath.Join(dir, "file.txt")}))
	if err != nil {
		t.Fatal(err)
	}
	en := st.Msg.GetEntry()
	if en.GetType() != fspb.FileType_FILE_TYPE_FILE || en.GetSize() != 5 || en.GetMode() != 0o600 || en.GetPermissions() != "-rw-------" ||
		en.GetOwner() != "root" && os.Geteuid() == 0 || en.GetModifiedTime().AsTime().IsZero() {
		t.Fatalf("Stat = %v", en)
	}

	md, err := c.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: filepath.Join(dir, "x/y")}))
	if err != nil || md.Msg.GetEntry().GetType() != fspb.FileType_FILE_TYPE_DIRECTORY {
		t.Fatalf("MakeDir: %v %v", md, err)
	}
	_, err = c.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: filepath.Join(dir, "x/y")}))
	wantCode(t, err, connect.CodeAlreadyExists)

	mv, err := c.Move(ctx, connect.NewRequest(&fspb.MoveRequest{Source: filepath.Join(dir, "file.txt"), Destination: filepath.Join(dir, "x/y/moved.txt")}))
	if err != nil || mv.Msg.GetEntry().GetPath() != filepath.Join(dir, "x/y/moved.txt") {
		t.Fatalf("Move: %v %v", mv, err)
	}

	ls, err := c.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: dir, Depth: 3}))
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, en := range ls.Msg.GetEntries() {
		paths = append(paths, en.GetPath())
	}
	want := []string{filepath.Join(dir, "x"), filepath.Join(dir, "x/y"), filepath.Join(dir, "x/y/moved.txt")}
	if fmt.Sprint(paths) != fmt.Sprint(want) {
		t.Fatalf("ListDir = %v, want %v", paths, want)
	}
	ls1, err := c.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: dir}))
	if err != nil || len(ls1.Msg.GetEntries()) != 1 {
		t.Fatalf("ListDir depth 0 means 1: %v %v", ls1, err)
	}

	if _, err := c.Remove(ctx, connect.NewRequest(&fspb.RemoveRequest{Path: filepath.Join(dir, "x")})); err != nil {
		t.Fatal(err)
	}
	_, err = c.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: filepath.Join(dir, "x")}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = c.Remove(ctx, connect.NewRequest(&fspb.RemoveRequest{Path: filepath.Join(dir, "x")}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = c.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: ""}))
	wantCode(t, err, connect.CodeInvalidArgument, "path")
}

// addUser creates a throwaway user with a home directory, removed when the
// test ends, and returns its name and uid. Without root or useradd it skips
// (fails under CI=true).
func addUser(t *testing.T, prefix string) (string, int) {
	t.Helper()
	missing := ""
	if os.Geteuid() != 0 {
		missing = "root to create a user"
	} else if _, err := exec.LookPath("useradd"); err != nil {
		missing = "useradd (passwd package)"
	}
	if missing != "" {
		if testenv.InCI() {
			t.Fatalf("needs %s", missing)
		}
		t.Skipf("skipping: needs %s", missing)
	}
	name := fmt.Sprintf("%s%d", prefix, time.Now().UnixNano()%1_000_000)
	if out, err := exec.Command("useradd", "-m", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v %s", err, out)
	}
	uidOut, err := exec.Command("id", "-u", name).Output()
	if err != nil {
		t.Fatal(err)
	}
	uid, err := strconv.Atoi(strings.TrimSpace(string(uidOut)))
	if err != nil {
		t.Fatalf("uid of %s: %v", name, err)
	}
	t.Cleanup(func() {
		// userdel refuses while any thread has the user's uid, and envd's
		// file operations ran on threads of this process that took it; they
		// end right after their operation.
		deadline := time.Now().Add(5 * time.Second)
		for threadsWithUID(t, uid) > 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := threadsWithUID(t, uid); n > 0 {
			t.Errorf("%d threads of envd still have %s's uid", n, name)
		}
		if out, err := exec.Command("userdel", "-r", name).CombinedOutput(); err != nil {
			t.Errorf("userdel: %v %s", err, out)
		}
	})
	return name, uid
}

// threadsWithUID counts this process's threads whose effective uid is uid.
func threadsWithUID(t *testing.T, uid int) int {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, task := range tasks {
		data, err := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "status"))
		if err != nil {
			continue // ended meanwhile
		}
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) >= 3 && f[0] == "Uid:" && f[2] == strconv.Itoa(uid) {
				n++
			}
		}
	}
	return n
}

func TestFilesystemPathsAreTheUsers(t *testing.T) {
	name, uid := addUser(t, "wrenntfs")
	home := "/home/" + name

	e := startEnvd(t, Options{})
	c := fsClient(e.url)
	ctx := context.Background()
	for _, p := range []string{"~/proj/src", "rel/dir"} {
		req := connect.NewRequest(&fspb.MakeDirRequest{Path: p})
		req.Header().Set("Authorization", basicUser(name))
		res, err := c.MakeDir(ctx, req)
		if err != nil {
			t.Fatalf("MakeDir %s: %v", p, err)
		}
		en := res.Msg.GetEntry()
		wantPath := filepath.Join(home, p)
		if p[0] == '~' {
			wantPath = filepath.Join(home, p[2:])
		}
		if en.GetPath() != wantPath || en.GetOwner() != name {
			t.Fatalf("MakeDir %s = %s owned by %s, want %s owned by %s", p, en.GetPath(), en.GetOwner(), wantPath, name)
		}
	}
	// A process of that user can write into what was created for it.
	req := startReq("/bin/sh", "-c", "touch ~/proj/src/ok && touch rel/dir/ok && echo yes")
	req.Header().Set("Authorization", basicUser(name))
	if r := run(t, e.client(), req); r.stdout.String() != "yes\n" {
		t.Fatalf("user could not write into its new directories: %q %q (uid %d)", r.stdout.String(), r.stderr.String(), uid)
	}
	// Uploads name their user in the query, as the SDKs do.
	code, infos, body := postFile(t, e, url.Values{"path": {"up/x.txt"}, "username": {name}}, "application/octet-stream", strings.NewReader("x"), nil)
	if code != 200 || len(infos) != 1 || infos[0].Path != filepath.Join(home, "up/x.txt") {
		t.Fatalf("upload as %s = %d %s", name, code, body)
	}
	for _, p := range []string{"up", "up/x.txt"} {
		fi, err := os.Stat(filepath.Join(home, p))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid {
			t.Errorf("%s owned by uid %d, want %d", p, st.Uid, uid)
		}
	}

	stReq := connect.NewRequest(&fspb.StatRequest{Path: "~"})
	stReq.Header().Set("Authorization", basicUser(name))
	st, err := c.Stat(ctx, stReq)
	if err != nil || st.Msg.GetEntry().GetPath() != home {
		t.Fatalf("Stat ~ = %v %v, want %s", st, err, home)
	}
}

// TestFileOperationsObeyTheUsersPermissions: envd runs as root, but what it
// does for a user the kernel checks against that user. A root-owned 0700
// directory is closed to the user through every RPC and route, each
// refusal permission_denied (403 over HTTP) naming the path, and nothing
// in it changes; what the user writes elsewhere is the user's.
func TestFileOperationsObeyTheUsersPermissions(t *testing.T) {
	name, uid := addUser(t, "wrenntperm")
	base := t.TempDir()
	// t.TempDir's parent is root's alone; let the user through to base.
	for _, p := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	private := filepath.Join(base, "private")
	secret := filepath.Join(private, "secret")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secret, []byte("root only"), 0o644); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil { // past the umask
		t.Fatal(err)
	}

	e := startEnvd(t, Options{})
	c := fsClient(e.url)
	ctx := context.Background()
	asUser := func(h interface{ Header() http.Header }) { h.Header().Set("Authorization", basicUser(name)) }
	rpcs := []struct {
		name string
		call func() error
	}{
		{"Stat", func() error {
			r := connect.NewRequest(&fspb.StatRequest{Path: secret})
			asUser(r)
			_, err := c.Stat(ctx, r)
			return err
		}},
		{"ListDir", func() error {
			r := connect.NewRequest(&fspb.ListDirRequest{Path: private, Depth: 1})
			asUser(r)
			_, err := c.ListDir(ctx, r)
			return err
		}},
		{"MakeDir", func() error {
			r := connect.NewRequest(&fspb.MakeDirRequest{Path: filepath.Join(private, "d")})
			asUser(r)
			_, err := c.MakeDir(ctx, r)
			return err
		}},
		{"Move", func() error {
			r := connect.NewRequest(&fspb.MoveRequest{Source: secret, Destination: filepath.Join(open, "stolen")})
			asUser(r)
			_, err := c.Move(ctx, r)
			return err
		}},
		{"Remove", func() error {
			r := connect.NewRequest(&fspb.RemoveRequest{Path: secret})
			asUser(r)
			_, err := c.Remove(ctx, r)
			return err
		}},
		{"CreateWatcher", func() error {
			r := connect.NewRequest(&fspb.CreateWatcherRequest{Path: private})
			asUser(r)
			_, err := c.CreateWatcher(ctx, r)
			return err
		}},
	}
	for _, rpc := range rpcs {
		err := rpc.call()
		if connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), private) {
			t.Errorf("%s into %s as %s: %v, want permission_denied naming the path", rpc.name, private, name, err)
		}
	}
	resp, body := getFile(t, e, url.Values{"path": {secret}, "username": {name}}, nil)
	if resp.StatusCode != 403 || !strings.Contains(string(body), secret) {
		t.Errorf("download of %s as %s: %d %s, want 403 naming the path", secret, name, resp.StatusCode, body)
	}
	for _, p := range []string{filepath.Join(private, "new"), secret} {
		code, _, body := postFile(t, e, url.Values{"path": {p}, "username": {name}}, "application/octet-stream", strings.NewReader("x"), nil)
		if code != 403 || !strings.Contains(body, private) {
			t.Errorf("upload to %s as %s: %d %s, want 403 naming the path", p, name, code, body)
		}
	}
	if data, err := os.ReadFile(secret); err != nil || string(data) != "root only" {
		t.Errorf("the secret changed: %q %v", data, err)
	}
	if des, err := os.ReadDir(private); err != nil || len(des) != 1 {
		t.Errorf("the private directory holds %d entries (%v), want only the secret", len(des), err)
	}
	if _, err := os.Stat(filepath.Join(open, "stolen")); err == nil {
		t.Errorf("the secret was moved out")
	}

	// Root still may; the user may where its permissions allow, and owns
	// what it writes there, parents included.
	r := connect.NewRequest(&fspb.StatRequest{Path: secret})
	r.Header().Set("Authorization", basicUser("root"))
	if _, err := c.Stat(ctx, r); err != nil {
		t.Errorf("Stat as root: %v", err)
	}
	mine := filepath.Join(open, "sub", "mine.txt")
	if code, _, body := postFile(t, e, url.Values{"path": {mine}, "username": {name}}, "application/octet-stream", strings.NewReader("mine"), nil); code != 200 {
		t.Fatalf("upload to %s as %s: %d %s", mine, name, code, body)
	}
	for _, p := range []string{filepath.Dir(mine), mine} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid {
			t.Errorf("%s owned by uid %d, want %s's %d", p, st.Uid, name, uid)
		}
	}
	if resp, body := getFile(t, e, url.Values{"path": {mine}, "username": {name}}, nil); resp.StatusCode != 200 || string(body) != "mine" {
		t.Errorf("download of its own file: %d %q", resp.StatusCode, body)
	}
}

package server

import (
	"context"
	"fmt"
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

func TestFilesystemPathsAreTheUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a user")
	}
	if _, err := exec.LookPath("useradd"); err != nil {
		t.Skipf("needs useradd: %v", err)
	}
	name := fmt.Sprintf("wrenntfs%d", time.Now().UnixNano()%1_000_000)
	if out, err := exec.Command("useradd", "-m", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", "-r", name).CombinedOutput(); err != nil {
			t.Errorf("userdel: %v %s", err, out)
		}
	})
	uidOut, err := exec.Command("id", "-u", name).Output()
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(string(uidOut[:len(uidOut)-1]))
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

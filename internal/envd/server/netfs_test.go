package server

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/internal/testenv"
	fspb "github.com/wrenn/wrenn/proto/envd/filesystem"
)

// TestWatchNetworkMount watches a directory on a real FUSE mount (bindfs):
// refused unless the request allows network mounts, as E2B's envd does,
// since inotify there sees only changes made through this machine.
func TestWatchNetworkMount(t *testing.T) {
	t.Parallel()
	bindfs, err := exec.LookPath("bindfs")
	if err != nil || os.Geteuid() != 0 {
		msg := "needs root and bindfs (apt-get install bindfs) for a FUSE mount"
		if testenv.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	src, mnt := t.TempDir(), t.TempDir()
	if out, err := exec.Command(bindfs, "--no-allow-other", src, mnt).CombinedOutput(); err != nil {
		t.Fatalf("bindfs %s %s: %v\n%s", src, mnt, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
	})

	e := startEnvd(t, Options{})
	c := fsClient(e.url)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	s, err := c.WatchDir(ctx, connect.NewRequest(&fspb.WatchDirRequest{Path: mnt}))
	if err == nil && !s.Receive() {
		err = s.Err()
	}
	wantCode(t, err, connect.CodeFailedPrecondition, mnt, "fuse", "allow_network_mounts")
	_, err = c.CreateWatcher(ctx, connect.NewRequest(&fspb.CreateWatcherRequest{Path: mnt, Recursive: true}))
	wantCode(t, err, connect.CodeFailedPrecondition, "fuse")
	e.srv.watchers.mu.Lock()
	n := len(e.srv.watchers.byID)
	e.srv.watchers.mu.Unlock()
	if n != 0 {
		t.Fatalf("a refused CreateWatcher left %d watchers", n)
	}

	// Allowed, it watches, and sees what is done through the mount here.
	s, err = c.WatchDir(ctx, connect.NewRequest(&fspb.WatchDirRequest{Path: mnt, AllowNetworkMounts: true}))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Receive() || s.Msg().GetStart() == nil {
		t.Fatalf("no start event when allowed: %v", s.Err())
	}
	if err := os.WriteFile(filepath.Join(mnt, "seen.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for s.Receive() {
		if ev := s.Msg().GetFilesystem(); ev.GetName() == "seen.txt" && ev.GetType() == fspb.EventType_EVENT_TYPE_CREATE {
			return
		}
	}
	t.Fatalf("no create event on the allowed FUSE mount: %v", s.Err())
}

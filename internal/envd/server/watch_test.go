package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	fspb "github.com/wrenn/wrenn/proto/envd/filesystem"
)

func TestWatchDir(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	c := fsClient(e.url)
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(filepath.Join(dir, "sub"), 0o755))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req := connect.NewRequest(&fspb.WatchDirRequest{Path: dir, Recursive: true, IncludeEntry: true})
	req.Header().Set(KeepaliveHeader, "0.1")
	s, err := c.WatchDir(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Receive() || s.Msg().GetStart() == nil {
		t.Fatalf("first message is not a start event: %v %v", s.Msg(), s.Err())
	}
	must(os.WriteFile(filepath.Join(dir, "sub/new.txt"), []byte("x"), 0o644))
	var sawCreate, sawKeepalive bool
	for !sawCreate || !sawKeepalive {
		if !s.Receive() {
			t.Fatalf("stream ended: %v", s.Err())
		}
		switch m := s.Msg(); {
		case m.GetKeepalive() != nil:
			sawKeepalive = true
		case m.GetFilesystem() != nil:
			ev := m.GetFilesystem()
			if ev.GetName() == "sub/new.txt" && ev.GetType() == fspb.EventType_EVENT_TYPE_CREATE {
				if ev.GetEntry().GetPath() != filepath.Join(dir, "sub/new.txt") {
					t.Fatalf("create event entry = %v", ev.GetEntry())
				}
				sawCreate = true
			}
		}
	}
	cancel()
	s.Close()

	ws, _ := c.WatchDir(context.Background(), connect.NewRequest(&fspb.WatchDirRequest{Path: filepath.Join(dir, "sub/new.txt")}))
	for ws.Receive() {
	}
	wantCode(t, ws.Err(), connect.CodeInvalidArgument, "not a directory")
}

func TestPolledWatcher(t *testing.T) {
	t.Parallel()
	e := startEnvd(t, Options{})
	c := fsClient(e.url)
	ctx := context.Background()
	dir := t.TempDir()

	cr, err := c.CreateWatcher(ctx, connect.NewRequest(&fspb.CreateWatcherRequest{Path: dir}))
	if err != nil {
		t.Fatal(err)
	}
	id := cr.Msg.GetWatcherId()
	if err := os.WriteFile(filepath.Join(dir, "a"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "a")); err != nil {
		t.Fatal(err)
	}
	var got []string
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < 2 && time.Now().Before(deadline) {
		res, err := c.GetWatcherEvents(ctx, connect.NewRequest(&fspb.GetWatcherEventsRequest{WatcherId: id}))
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range res.Msg.GetEvents() {
			got = append(got, ev.GetName()+":"+ev.GetType().String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(got) != 2 || got[0] != "a:EVENT_TYPE_CREATE" || got[1] != "a:EVENT_TYPE_REMOVE" {
		t.Fatalf("events %v", got)
	}
	// Collected events are handed out once.
	res, err := c.GetWatcherEvents(ctx, connect.NewRequest(&fspb.GetWatcherEventsRequest{WatcherId: id}))
	if err != nil || len(res.Msg.GetEvents()) != 0 {
		t.Fatalf("second poll: %v %v", res, err)
	}
	if _, err := c.RemoveWatcher(ctx, connect.NewRequest(&fspb.RemoveWatcherRequest{WatcherId: id})); err != nil {
		t.Fatal(err)
	}
	_, err = c.GetWatcherEvents(ctx, connect.NewRequest(&fspb.GetWatcherEventsRequest{WatcherId: id}))
	wantCode(t, err, connect.CodeNotFound, id)
	_, err = c.RemoveWatcher(ctx, connect.NewRequest(&fspb.RemoveWatcherRequest{WatcherId: id}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = c.CreateWatcher(ctx, connect.NewRequest(&fspb.CreateWatcherRequest{Path: filepath.Join(dir, "missing")}))
	wantCode(t, err, connect.CodeNotFound)
}

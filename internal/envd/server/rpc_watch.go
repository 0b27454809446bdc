package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/internal/envd/fsops"
	"github.com/wrenn/wrenn/internal/envd/watch"
	fspb "github.com/wrenn/wrenn/proto/envd/filesystem"
)

// maxPendingEvents bounds what a polled watcher keeps between two
// GetWatcherEvents calls; older events are dropped first.
const maxPendingEvents = 10000

// maxPollWatchers bounds polled watchers, which live until removed.
const maxPollWatchers = 256

// watchers holds the polled watchers (CreateWatcher / GetWatcherEvents).
type watchers struct {
	mu     sync.Mutex
	byID   map[string]*pollWatcher
	closed bool
}

type pollWatcher struct {
	w       *watch.Watcher
	mu      sync.Mutex
	pending []*fspb.FilesystemEvent
	dropped int
	ended   bool
}

func watchError(err error) error {
	switch {
	case errors.Is(err, watch.ErrInvalid):
		return connect.NewError(connect.CodeInvalidArgument, err)
	case errors.Is(err, watch.ErrLimit):
		return connect.NewError(connect.CodeResourceExhausted, err)
	case errors.Is(err, watch.ErrNetworkFS):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	default:
		return fsError(err)
	}
}

func toFSEvent(ev watch.Event, includeEntry bool, f *filesystemService) *fspb.FilesystemEvent {
	out := &fspb.FilesystemEvent{Name: ev.Name}
	switch ev.Op {
	case watch.Create:
		out.Type = fspb.EventType_EVENT_TYPE_CREATE
	case watch.Write:
		out.Type = fspb.EventType_EVENT_TYPE_WRITE
	case watch.Remove:
		out.Type = fspb.EventType_EVENT_TYPE_REMOVE
	case watch.Rename:
		out.Type = fspb.EventType_EVENT_TYPE_RENAME
	case watch.Chmod:
		out.Type = fspb.EventType_EVENT_TYPE_CHMOD
	}
	if includeEntry && ev.Op != watch.Remove && ev.Op != watch.Rename {
		if e, err := fsops.Stat(ev.Path); err == nil {
			out.Entry = toEntry(e, f.names())
		}
	}
	return out
}

func (f *filesystemService) newWatcher(h http.Header, path string, recursive, allowNetwork bool) (*watch.Watcher, error) {
	c, err := f.s.callerOf(h)
	if err != nil {
		return nil, fsError(err)
	}
	p, err := f.path(c, "path", path)
	if err != nil {
		return nil, fsError(err)
	}
	// Watches are added as the user, so only directories the user may
	// read are watched; directories created later are added by envd.
	w, err := fsops.As(c.fs, func() (*watch.Watcher, error) {
		if !allowNetwork {
			netfs, err := watch.NetworkFilesystem(p)
			if err != nil {
				return nil, err
			}
			if netfs != "" {
				return nil, fmt.Errorf("%s is on a %w (%s), where changes made elsewhere raise no events; set allow_network_mounts (allowNetworkMounts in the SDKs) to watch it anyway", p, watch.ErrNetworkFS, netfs)
			}
		}
		return watch.New(p, recursive)
	})
	if err != nil {
		return nil, watchError(err)
	}
	return w, nil
}

// WatchDir streams changes below a directory until the client leaves or the
// directory goes away.
func (f *filesystemService) WatchDir(ctx context.Context, req *connect.Request[fspb.WatchDirRequest], stream *connect.ServerStream[fspb.WatchDirResponse]) error {
	w, err := f.newWatcher(req.Header(), req.Msg.GetPath(), req.Msg.GetRecursive(), req.Msg.GetAllowNetworkMounts())
	if err != nil {
		return err
	}
	defer w.Close()
	if err := stream.Send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Start{Start: &fspb.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	interval := keepaliveInterval(req.Header().Get(KeepaliveHeader))
	keepalive := time.NewTimer(interval)
	defer keepalive.Stop()
	for {
		select {
		case <-ctx.Done():
			return connectError(ctx.Err())
		case <-keepalive.C:
			if err := stream.Send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Keepalive{Keepalive: &fspb.WatchDirResponse_KeepAlive{}}}); err != nil {
				return err
			}
		case ev, ok := <-w.Events():
			if !ok {
				return nil
			}
			msg := &fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Filesystem{Filesystem: toFSEvent(ev, req.Msg.GetIncludeEntry(), f)}}
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
		keepalive.Reset(interval)
	}
}

// CreateWatcher starts a watcher whose events are collected for polling.
func (f *filesystemService) CreateWatcher(_ context.Context, req *connect.Request[fspb.CreateWatcherRequest]) (*connect.Response[fspb.CreateWatcherResponse], error) {
	ws := &f.s.watchers
	ws.mu.Lock()
	full := len(ws.byID) >= maxPollWatchers
	ws.mu.Unlock()
	if full {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("%d watchers exist; remove some with RemoveWatcher", maxPollWatchers))
	}
	w, err := f.newWatcher(req.Header(), req.Msg.GetPath(), req.Msg.GetRecursive(), req.Msg.GetAllowNetworkMounts())
	if err != nil {
		return nil, err
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	pw := &pollWatcher{w: w}
	ws.mu.Lock()
	if ws.closed {
		ws.mu.Unlock()
		_ = w.Close()
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("envd is shutting down"))
	}
	if ws.byID == nil {
		ws.byID = map[string]*pollWatcher{}
	}
	ws.byID[id] = pw
	ws.mu.Unlock()

	include := req.Msg.GetIncludeEntry()
	go func() {
		for ev := range w.Events() {
			fe := toFSEvent(ev, include, f)
			pw.mu.Lock()
			if len(pw.pending) >= maxPendingEvents {
				pw.pending = pw.pending[1:]
				pw.dropped++
			}
			pw.pending = append(pw.pending, fe)
			pw.mu.Unlock()
		}
		pw.mu.Lock()
		pw.ended = true
		pw.mu.Unlock()
	}()
	return connect.NewResponse(&fspb.CreateWatcherResponse{WatcherId: id}), nil
}

func (f *filesystemService) pollWatcher(id string) (*pollWatcher, error) {
	ws := &f.s.watchers
	ws.mu.Lock()
	defer ws.mu.Unlock()
	pw, ok := ws.byID[id]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no watcher with id %q", id))
	}
	return pw, nil
}

// GetWatcherEvents returns and forgets the events collected since the last
// call. After the watched directory went away it returns the last events and
// then not_found.
func (f *filesystemService) GetWatcherEvents(_ context.Context, req *connect.Request[fspb.GetWatcherEventsRequest]) (*connect.Response[fspb.GetWatcherEventsResponse], error) {
	pw, err := f.pollWatcher(req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	pw.mu.Lock()
	events, dropped, ended := pw.pending, pw.dropped, pw.ended
	pw.pending, pw.dropped = nil, 0
	pw.mu.Unlock()
	if dropped > 0 {
		f.s.log.Warn("watcher dropped events nobody collected", "watcher_id", req.Msg.GetWatcherId(), "dropped", dropped)
	}
	if ended && len(events) == 0 {
		f.removeWatcher(req.Msg.GetWatcherId())
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher %q ended: its directory is gone", req.Msg.GetWatcherId()))
	}
	return connect.NewResponse(&fspb.GetWatcherEventsResponse{Events: events}), nil
}

func (f *filesystemService) removeWatcher(id string) bool {
	ws := &f.s.watchers
	ws.mu.Lock()
	pw, ok := ws.byID[id]
	delete(ws.byID, id)
	ws.mu.Unlock()
	if ok {
		_ = pw.w.Close()
	}
	return ok
}

// RemoveWatcher stops a polled watcher.
func (f *filesystemService) RemoveWatcher(_ context.Context, req *connect.Request[fspb.RemoveWatcherRequest]) (*connect.Response[fspb.RemoveWatcherResponse], error) {
	if !f.removeWatcher(req.Msg.GetWatcherId()) {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no watcher with id %q", req.Msg.GetWatcherId()))
	}
	return connect.NewResponse(&fspb.RemoveWatcherResponse{}), nil
}

// closeAll stops every polled watcher at shutdown.
func (ws *watchers) closeAll() {
	ws.mu.Lock()
	ws.closed = true
	all := ws.byID
	ws.byID = nil
	ws.mu.Unlock()
	for _, pw := range all {
		_ = pw.w.Close()
	}
}

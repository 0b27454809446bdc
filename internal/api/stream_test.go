package api

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// withStream serves GET /v1/events from a real Redis, with a short
// keepalive so the test sees one.
func withStream(e *env, d *Deps) {
	withRedis(e, d)
	d.Redis = e.redis
	d.StreamKeepalive = 300 * time.Millisecond
}

type sseMsg struct {
	id, event, data, comment string
}

// subscribe opens GET /v1/events and returns its messages as they arrive.
func subscribe(t *testing.T, srv *httptest.Server, key, lastID string) (<-chan sseMsg, *http.Response) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/events", nil)
	must(t, err)
	req.Header.Set("X-API-Key", key)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	res, err := srv.Client().Do(req)
	must(t, err)
	t.Cleanup(func() { res.Body.Close() })
	out := make(chan sseMsg, 64)
	if res.StatusCode != 200 {
		close(out)
		return out, res
	}
	go func() {
		defer close(out)
		sc := bufio.NewScanner(res.Body)
		var m sseMsg
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				out <- m
				m = sseMsg{}
			case strings.HasPrefix(line, ":"):
				m.comment = strings.TrimSpace(line[1:])
			case strings.HasPrefix(line, "id: "):
				m.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				m.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				m.data = line[6:]
			}
		}
	}()
	return out, res
}

// next returns the next status message, skipping comments, or fails.
func next(t *testing.T, ch <-chan sseMsg) (sseMsg, StatusChange) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatal("stream ended")
			}
			if m.event == "" {
				continue
			}
			var sc StatusChange
			if err := json.Unmarshal([]byte(m.data), &sc); err != nil {
				t.Fatalf("data %q: %v", m.data, err)
			}
			return m, sc
		case <-timeout:
			t.Fatal("no status event within 10 s")
		}
	}
}

func TestEventStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withStream)
	_, key := e.team(false)
	_, otherKey := e.team(false)
	e.host("h1")
	srv := httptest.NewServer(e.h)
	t.Cleanup(srv.Close)
	t.Cleanup(e.api.CloseStreams)

	if _, res := subscribe(t, srv, "", ""); res.StatusCode != 401 {
		t.Errorf("no key: %d", res.StatusCode)
	}
	if _, res := subscribe(t, srv, key, "bogus"); res.StatusCode != 400 {
		t.Errorf("bad Last-Event-ID: %d", res.StatusCode)
	}

	ch, res := subscribe(t, srv, key, "")
	if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	if m := <-ch; m.comment != "connected" {
		t.Fatalf("first message %+v", m)
	}
	// Another team's sandbox must not show up in this stream.
	e.create(otherKey)
	sid := e.create(key)
	m, sc := next(t, ch)
	if sc.SandboxID != sid || sc.From != "starting" || sc.To != "running" || m.event != "status" || m.id == "" {
		t.Fatalf("first event %+v %+v", m, sc)
	}
	// Idle streams get keepalive comments.
	deadline := time.After(5 * time.Second)
	for got := false; !got; {
		select {
		case m := <-ch:
			if m.event != "" {
				t.Fatalf("unexpected event %+v", m)
			}
			got = m.comment == "keepalive"
		case <-deadline:
			t.Fatal("no keepalive")
		}
	}

	// A client that reconnects with Last-Event-ID gets what it missed.
	resumeFrom := m.id
	if r := e.do("DELETE", "/v1/sandboxes/"+sid, key, nil); r.status != 202 {
		t.Fatalf("delete %d", r.status)
	}
	e.waitStatus(key, sid, "stopped")
	ch2, _ := subscribe(t, srv, key, resumeFrom)
	for _, want := range []string{"running>stopping", "stopping>stopped"} {
		_, sc := next(t, ch2)
		if got := sc.From + ">" + sc.To; got != want || sc.SandboxID != sid {
			t.Errorf("replayed %s of %s, want %s", got, sc.SandboxID, want)
		}
	}
}

// An outcome whose writer has not recorded it yet (it is published first)
// is recorded before the stream hands it to a client, so a read right
// after the event agrees with it. A stale event stays unapplied.
func TestEventStreamRecordsBeforeSending(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withStream)
	teamID, key := e.team(false)
	hostID := e.host("h1")
	srv := httptest.NewServer(e.h)
	t.Cleanup(srv.Close)
	t.Cleanup(e.api.CloseStreams)
	sid := e.insertSandbox(teamID, hostID, "pausing")
	var gen int64
	must(t, e.pool.QueryRow(context.Background(), "SELECT generation FROM sandboxes WHERE id = $1", sid).Scan(&gen))

	ch, _ := subscribe(t, srv, key, "")
	if m := <-ch; m.comment != "connected" {
		t.Fatalf("first message %+v", m)
	}
	pub := events.NewRedisPublisher(e.redis)
	ctx := context.Background()
	// A stale outcome of an earlier operation first, then the current one.
	must(t, pub.Publish(ctx, events.Event{SandboxID: sid, TeamID: teamID, HostID: hostID, From: lifecycle.Pausing, To: lifecycle.Running, Generation: gen - 1, Actor: "worker", Time: time.Now()}))
	must(t, pub.Publish(ctx, events.Event{SandboxID: sid, TeamID: teamID, HostID: hostID, From: lifecycle.Pausing, To: lifecycle.Paused, Generation: gen, Actor: "worker", Time: time.Now()}))
	if _, sc := next(t, ch); sc.To != "running" {
		t.Fatalf("first event %+v", sc)
	}
	if _, sc := next(t, ch); sc.SandboxID != sid || sc.To != "paused" {
		t.Fatalf("second event %+v", sc)
	}
	var got Sandbox
	if r := e.do("GET", "/v1/sandboxes/"+sid, key, nil); r.status != 200 {
		t.Fatalf("get: %d", r.status)
	} else {
		r.decode(t, &got)
	}
	if got.Status != "paused" {
		t.Errorf("right after the paused event the sandbox reads %s, want paused", got.Status)
	}
}

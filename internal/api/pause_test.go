package api

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/pkg/events"
)

// create makes a running sandbox and returns its id.
func (e *env) create(key string) string {
	e.t.Helper()
	r := e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"})
	if r.status != http.StatusAccepted {
		e.t.Fatalf("create: %d %s", r.status, r.body)
	}
	var sb Sandbox
	r.decode(e.t, &sb)
	e.waitStatus(key, sb.ID, "running")
	return sb.ID
}

func TestPauseResumeLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withRedis)
	_, key := e.team(false)
	e.host("h1")
	sid := e.create(key)

	// Resuming a running sandbox is accepted and calls nobody.
	if r := e.do("POST", "/v1/sandboxes/"+sid+"/resume", key, nil); r.status != http.StatusAccepted || e.fake.Calls("ResumeSandbox") != 0 {
		t.Fatalf("resume running: %d %s", r.status, r.body)
	}
	if r := e.do("POST", "/v1/sandboxes/"+sid+"/pause", key, nil); r.status != http.StatusAccepted || len(r.body) != 0 {
		t.Fatalf("pause: %d %q", r.status, r.body)
	}
	e.waitStatus(key, sid, "paused")
	if st, _ := e.fake.State(sid); st != hostclient.StatePaused {
		t.Errorf("host state %s", st)
	}
	// Pausing a paused sandbox is accepted and calls nobody.
	if r := e.do("POST", "/v1/sandboxes/"+sid+"/pause", key, nil); r.status != http.StatusAccepted {
		t.Errorf("second pause: %d", r.status)
	}
	if n := e.fake.Calls("PauseSandbox"); n != 1 {
		t.Errorf("PauseSandbox called %d times", n)
	}
	if r := e.do("POST", "/v1/sandboxes/"+sid+"/ping", key, nil); r.status != http.StatusConflict {
		t.Errorf("ping paused: %d", r.status)
	}
	if r := e.do("POST", "/v1/sandboxes/"+sid+"/exec", key, map[string]any{"cmd": "true"}); r.status != http.StatusConflict {
		t.Errorf("exec paused: %d", r.status)
	}
	if r := e.do("POST", "/v1/sandboxes/"+sid+"/resume", key, nil); r.status != http.StatusAccepted || len(r.body) != 0 {
		t.Fatalf("resume: %d %q", r.status, r.body)
	}
	e.waitStatus(key, sid, "running")
	if r := e.do("POST", "/v1/sandboxes/"+sid+"/ping", key, nil); r.status != http.StatusNoContent {
		t.Errorf("ping: %d %s", r.status, r.body)
	}
	// Destroy works from paused.
	e.do("POST", "/v1/sandboxes/"+sid+"/pause", key, nil)
	e.waitStatus(key, sid, "paused")
	if r := e.do("DELETE", "/v1/sandboxes/"+sid, key, nil); r.status != http.StatusAccepted {
		t.Fatalf("delete paused: %d", r.status)
	}
	e.waitStatus(key, sid, "stopped")
	if e.fake.Has(sid) {
		t.Error("sandbox left on the host")
	}
	for _, op := range []string{"pause", "resume", "ping"} {
		r := e.do("POST", "/v1/sandboxes/"+sid+"/"+op, key, nil)
		if r.status != http.StatusConflict {
			t.Errorf("%s stopped: %d", op, r.status)
			continue
		}
		if _, msg := r.errCode(t); !strings.Contains(msg, "is stopped") {
			t.Errorf("%s: 409 does not name the status: %q", op, msg)
		}
	}

	msgs, err := e.redis.XRange(context.Background(), events.Stream, "-", "+").Result()
	must(t, err)
	var got []string
	for _, m := range msgs {
		ev, err := events.Decode(m.Values)
		must(t, err)
		got = append(got, string(ev.From)+">"+string(ev.To))
	}
	want := []string{"starting>running", "running>pausing", "pausing>paused", "paused>resuming", "resuming>running",
		"running>pausing", "pausing>paused", "paused>stopping", "stopping>stopped"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
}

// A failed pause goes back to running, a failed resume back to paused, and
// a sandbox the host lost becomes stopped.
func TestPauseResumeFailures(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	e.host("h1")
	var failPause, failResume error
	e.fake.OnPause = func(context.Context, string) error { return failPause }
	e.fake.OnResume = func(context.Context, string) error { return failResume }
	sid := e.create(key)

	failPause = &hostclient.Error{Op: "pause sandbox", Class: hostclient.ErrInternal, Err: errors.New("freezer stuck")}
	e.do("POST", "/v1/sandboxes/"+sid+"/pause", key, nil)
	e.waitStatus(key, sid, "running")
	if e.fake.Calls("PauseSandbox") != 1 {
		t.Fatal("pause not attempted")
	}
	failPause = nil
	e.do("POST", "/v1/sandboxes/"+sid+"/pause", key, nil)
	e.waitStatus(key, sid, "paused")

	failResume = &hostclient.Error{Op: "resume sandbox", Class: hostclient.ErrUnavailable, Err: errors.New("down")}
	e.do("POST", "/v1/sandboxes/"+sid+"/resume", key, nil)
	e.waitStatus(key, sid, "paused")
	if e.fake.Calls("ResumeSandbox") != 1 {
		t.Fatal("resume not attempted")
	}
	failResume = nil
	e.fake.Vanish(sid)
	e.do("POST", "/v1/sandboxes/"+sid+"/resume", key, nil)
	e.waitStatus(key, sid, "stopped")
}

func TestSetTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	_, other := e.team(false)
	e.host("h1")
	sid := e.create(key)
	tests := []struct {
		name string
		key  string
		body any
		want int
	}{
		{"missing", key, `{}`, 400},
		{"zero", key, `{"timeout_sec":0}`, 400},
		{"too long", key, `{"timeout_sec":86401}`, 400},
		{"string", key, `{"timeout_sec":"9"}`, 400},
		{"unknown field", key, `{"timeout_sec":9,"x":1}`, 400},
		{"other team", other, `{"timeout_sec":9}`, 404},
		{"ok", key, `{"timeout_sec":900}`, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("POST", "/v1/sandboxes/"+sid+"/timeout", tc.key, tc.body)
			if r.status != tc.want {
				t.Fatalf("%d %s, want %d", r.status, r.body, tc.want)
			}
		})
	}
	if got, _ := e.fake.Timeout(sid); got != 900 {
		t.Errorf("host timeout %d", got)
	}
	if sb := e.waitStatus(key, sid, "running"); sb.TimeoutSec != 900 {
		t.Errorf("recorded timeout %d", sb.TimeoutSec)
	}
	if n := e.fake.Calls("SetSandboxTimeout"); n != 1 {
		t.Errorf("agent called %d times", n)
	}
}

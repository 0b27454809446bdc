package api

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/id"
)

// Every bad create is a 400 naming the field (or the body), and changes
// nothing: no row, no agent call.
func TestCreateValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	e.host("h1")
	tests := []struct {
		name  string
		body  any
		field string
	}{
		{"malformed", `{"template":`, "body"},
		{"not an object", `["minimal"]`, "body"},
		{"null", `null`, "body"},
		{"trailing garbage", `{"template":"minimal"} x`, "body"},
		{"no template", `{}`, "template"},
		{"empty body", ``, "template"},
		{"unknown field", `{"template":"minimal","cpus":2}`, "cpus"},
		{"template wrong type", `{"template":5}`, "template"},
		{"vcpus fractional", `{"template":"minimal","vcpus":1.5}`, "vcpus"},
		{"vcpus string", `{"template":"minimal","vcpus":"2"}`, "vcpus"},
		{"vcpus zero", `{"template":"minimal","vcpus":0}`, "vcpus"},
		{"vcpus too many", `{"template":"minimal","vcpus":9}`, "vcpus"},
		{"memory low", `{"template":"minimal","memory_mb":127}`, "memory_mb"},
		{"memory high", `{"template":"minimal","memory_mb":16385}`, "memory_mb"},
		{"disk low", `{"template":"minimal","disk_mb":10}`, "disk_mb"},
		{"timeout zero", `{"template":"minimal","timeout_sec":0}`, "timeout_sec"},
		{"timeout high", `{"template":"minimal","timeout_sec":86401}`, "timeout_sec"},
		{"unknown template", `{"template":"nope"}`, "template"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("POST", "/v1/sandboxes", key, tc.body)
			code, msg := r.errCode(t)
			if r.status != http.StatusBadRequest || code != CodeInvalidArgument {
				t.Fatalf("got %d %s %q, want 400 invalid_argument", r.status, code, msg)
			}
			if !strings.HasPrefix(msg, tc.field+":") {
				t.Errorf("message %q does not name %q first", msg, tc.field)
			}
		})
	}
	if n := e.countSandboxes(); n != 0 {
		t.Errorf("%d sandboxes stored by bad requests", n)
	}
	if n := e.fake.Calls("CreateSandbox"); n != 0 {
		t.Errorf("agent called %d times by bad requests", n)
	}
	big := `{"template":"` + strings.Repeat("a", maxBody) + `"}`
	if r := e.do("POST", "/v1/sandboxes", key, big); r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: %d", r.status)
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	teamID, key := e.team(false)
	_, revoked := e.team(false)
	var keyID string
	must(t, e.pool.QueryRow(context.Background(), "SELECT id FROM api_keys WHERE key_hash = $1", hashSecret(revoked)).Scan(&keyID))
	var revTeam string
	must(t, e.pool.QueryRow(context.Background(), "SELECT team_id FROM api_keys WHERE id = $1", keyID).Scan(&revTeam))
	n, err := e.q.RevokeAPIKey(context.Background(), db.RevokeAPIKeyParams{ID: keyID, TeamID: revTeam, Now: ptr(time.Now())})
	if err != nil || n != 1 {
		t.Fatalf("revoke: %d, %v", n, err)
	}
	tests := []struct {
		name, key string
		want      int
	}{
		{"missing", "", 401},
		{"malformed", "hello", 401},
		{"unknown", id.NewAPIKey(), 401},
		{"revoked", revoked, 401},
		{"valid", key, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("GET", "/v1/sandboxes", tc.key, nil)
			if r.status != tc.want {
				t.Fatalf("status %d, want %d: %s", r.status, tc.want, r.body)
			}
			if tc.want == 401 {
				if code, _ := r.errCode(t); code != CodeUnauthorized {
					t.Errorf("code %s", code)
				}
			}
		})
	}
	var used *time.Time
	must(t, e.pool.QueryRow(context.Background(), "SELECT last_used_at FROM api_keys WHERE team_id = $1", teamID).Scan(&used))
	if used == nil {
		t.Error("last_used_at not recorded")
	}
	// Non-admins get a clear 403 on admin routes.
	if r := e.do("GET", "/v1/admin/hosts", key, nil); r.status != http.StatusForbidden {
		t.Errorf("non-admin on admin route: %d", r.status)
	}
}

// The whole slice through the fake agent: 202 starting, background create,
// running, exec, delete 202, stopped, and each outcome on the real stream.
func TestLifecycleThroughFakeAgent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withRedis)
	teamID, key := e.team(false)
	hostID := e.host("h1")

	r := e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal", "vcpus": 2, "memory_mb": 256})
	if r.status != http.StatusAccepted {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var sb Sandbox
	r.decode(t, &sb)
	if !id.Valid(id.Sandbox, sb.ID) || sb.Status != "starting" || sb.VCPUs != 2 || sb.MemoryMB != 256 || sb.TimeoutSec != 300 || sb.HostID != hostID {
		t.Fatalf("created %+v", sb)
	}
	run := e.waitStatus(key, sb.ID, "running")
	if run.StartedAt == nil || run.EnvdVersion != "fake-1" || run.DiskMB != 1024 {
		t.Errorf("running sandbox %+v", run)
	}

	r = e.do("POST", "/v1/sandboxes/"+sb.ID+"/exec", key, map[string]any{"cmd": "echo", "args": []string{"hi"}})
	var res ExecResult
	r.decode(t, &res)
	if r.status != 200 || res.Stdout != "hi\n" || res.ExitCode != 0 {
		t.Fatalf("exec: %d %+v", r.status, res)
	}

	var list struct{ Sandboxes []Sandbox }
	e.do("GET", "/v1/sandboxes", key, nil).decode(t, &list)
	if len(list.Sandboxes) != 1 || list.Sandboxes[0].ID != sb.ID {
		t.Errorf("list %+v", list)
	}

	if r := e.do("DELETE", "/v1/sandboxes/"+sb.ID, key, nil); r.status != http.StatusAccepted || len(r.body) != 0 {
		t.Fatalf("delete: %d %q", r.status, r.body)
	}
	stopped := e.waitStatus(key, sb.ID, "stopped")
	if stopped.StoppedAt == nil {
		t.Error("stopped_at not set")
	}
	// A second delete is accepted and calls nobody.
	if r := e.do("DELETE", "/v1/sandboxes/"+sb.ID, key, nil); r.status != http.StatusAccepted {
		t.Fatalf("second delete: %d", r.status)
	}
	if n := e.fake.Calls("DestroySandbox"); n != 1 {
		t.Errorf("DestroySandbox called %d times, want 1", n)
	}
	if e.fake.Has(sb.ID) {
		t.Error("sandbox still on the host")
	}
	// Exec on a stopped sandbox is a conflict.
	if r := e.do("POST", "/v1/sandboxes/"+sb.ID+"/exec", key, map[string]any{"cmd": "true"}); r.status != http.StatusConflict {
		t.Errorf("exec on stopped: %d", r.status)
	}

	msgs, err := e.redis.XRange(context.Background(), events.Stream, "-", "+").Result()
	must(t, err)
	var got []string
	for _, m := range msgs {
		ev, err := events.Decode(m.Values)
		must(t, err)
		if ev.SandboxID != sb.ID || ev.TeamID != teamID || ev.HostID != hostID || ev.Actor == "" || ev.Time.IsZero() {
			t.Errorf("event %+v", ev)
		}
		got = append(got, string(ev.From)+">"+string(ev.To))
	}
	want := []string{"starting>running", "running>stopping", "stopping>stopped"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
}

func TestCreateFailureBecomesError(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withRedis)
	_, key := e.team(false)
	e.host("h1")
	e.fake.OnCreate = func(ctx context.Context, req hostclient.CreateRequest) error {
		return &hostclient.Error{Op: "create sandbox", Class: hostclient.ErrUnavailable, Err: errors.New("dial tcp: connection refused")}
	}
	var sb Sandbox
	e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"}).decode(t, &sb)
	got := e.waitStatus(key, sb.ID, "error")
	if got.Error != "the host could not be reached to start the sandbox" {
		t.Errorf("error %q", got.Error)
	}
	msgs, err := e.redis.XRange(context.Background(), events.Stream, "-", "+").Result()
	must(t, err)
	if len(msgs) != 1 {
		t.Fatalf("%d events", len(msgs))
	}
	ev, _ := events.Decode(msgs[0].Values)
	if ev.From != "starting" || ev.To != "error" || ev.Error != got.Error {
		t.Errorf("event %+v", ev)
	}
	// An errored sandbox can be deleted.
	if r := e.do("DELETE", "/v1/sandboxes/"+sb.ID, key, nil); r.status != http.StatusAccepted {
		t.Fatalf("delete errored: %d", r.status)
	}
	e.waitStatus(key, sb.ID, "stopped")
}

// Team B never learns about team A's sandbox: 404 everywhere, nothing changed.
func TestTenantIsolation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, keyA := e.team(false)
	_, keyB := e.team(false)
	e.host("h1")
	var sb Sandbox
	e.do("POST", "/v1/sandboxes", keyA, map[string]any{"template": "minimal"}).decode(t, &sb)
	e.waitStatus(keyA, sb.ID, "running")
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/sandboxes/" + sb.ID},
		{"POST", "/v1/sandboxes/" + sb.ID + "/exec"},
		{"DELETE", "/v1/sandboxes/" + sb.ID},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			var body any
			if tc.method == "POST" {
				body = map[string]any{"cmd": "true"}
			}
			r := e.do(tc.method, tc.path, keyB, body)
			if code, _ := r.errCode(t); r.status != 404 || code != CodeNotFound {
				t.Fatalf("%d %s", r.status, r.body)
			}
		})
	}
	var list struct{ Sandboxes []Sandbox }
	e.do("GET", "/v1/sandboxes", keyB, nil).decode(t, &list)
	if len(list.Sandboxes) != 0 {
		t.Errorf("team B lists %d sandboxes", len(list.Sandboxes))
	}
	if got := e.waitStatus(keyA, sb.ID, "running"); got.Status != "running" {
		t.Error("changed")
	}
	if e.fake.Calls("Exec") != 0 || e.fake.Calls("DestroySandbox") != 0 {
		t.Error("team B reached the agent")
	}
	// Unknown and malformed ids are 404 too.
	if r := e.do("GET", "/v1/sandboxes/sb-nothere", keyA, nil); r.status != 404 {
		t.Errorf("malformed id: %d", r.status)
	}
}

func TestExec(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	e.host("h1")
	var sb Sandbox
	e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"}).decode(t, &sb)
	e.waitStatus(key, sb.ID, "running")
	var last atomic.Pointer[hostclient.ExecRequest]
	var fail atomic.Pointer[error]
	e.fake.OnExec = func(ctx context.Context, req hostclient.ExecRequest) (hostclient.ExecResult, error) {
		last.Store(&req)
		if p := fail.Load(); p != nil {
			return hostclient.ExecResult{}, *p
		}
		return hostclient.ExecResult{Stdout: []byte("out"), Stderr: []byte("err"), ExitCode: 2, TimedOut: true, Duration: 1500 * time.Millisecond}, nil
	}
	// Without args, cmd is a shell line.
	r := e.do("POST", "/v1/sandboxes/"+sb.ID+"/exec", key, map[string]any{"cmd": "echo $HOME | wc -c"})
	var res ExecResult
	r.decode(t, &res)
	if r.status != 200 || res != (ExecResult{Stdout: "out", Stderr: "err", ExitCode: 2, TimedOut: true, DurationMS: 1500}) {
		t.Fatalf("%d %+v", r.status, res)
	}
	if got := *last.Load(); got.Cmd != "/bin/sh" || !reflect.DeepEqual(got.Args, []string{"-c", "echo $HOME | wc -c"}) || got.TimeoutSec != 60 {
		t.Errorf("shell form sent %+v", got)
	}
	// With args (even empty), cmd runs as is.
	e.do("POST", "/v1/sandboxes/"+sb.ID+"/exec", key, map[string]any{"cmd": "true", "args": []string{}, "env": map[string]string{"A": "1"}, "cwd": "/tmp", "user": "root", "timeout_sec": 5})
	if got := *last.Load(); got.Cmd != "true" || len(got.Args) != 0 || got.Env["A"] != "1" || got.Cwd != "/tmp" || got.User != "root" || got.TimeoutSec != 5 {
		t.Errorf("args form sent %+v", got)
	}
	for _, tc := range []struct {
		name, body, field string
	}{
		{"no cmd", `{}`, "cmd"},
		{"args not strings", `{"cmd":"x","args":[1]}`, "args"},
		{"timeout", `{"cmd":"x","timeout_sec":0}`, "timeout_sec"},
		{"unknown", `{"cmd":"x","shell":true}`, "shell"},
	} {
		r := e.do("POST", "/v1/sandboxes/"+sb.ID+"/exec", key, tc.body)
		if _, msg := r.errCode(t); r.status != 400 || !strings.HasPrefix(msg, tc.field) {
			t.Errorf("%s: %d %q", tc.name, r.status, msg)
		}
	}
	for _, tc := range []struct {
		class error
		want  int
	}{
		{hostclient.ErrNotFound, 404},
		{hostclient.ErrConflict, 409},
		{hostclient.ErrInvalid, 400},
		{hostclient.ErrUnavailable, 503},
		{hostclient.ErrTimeout, 504},
		{hostclient.ErrInternal, 500},
	} {
		err := error(&hostclient.Error{Op: "exec", Class: tc.class, Message: "agent says", Err: errors.New("secret internal detail")})
		fail.Store(&err)
		r := e.do("POST", "/v1/sandboxes/"+sb.ID+"/exec", key, map[string]any{"cmd": "x"})
		if r.status != tc.want {
			t.Errorf("%v: %d, want %d", tc.class, r.status, tc.want)
		}
		if strings.Contains(string(r.body), "secret internal detail") {
			t.Errorf("%v: internal error leaked: %s", tc.class, r.body)
		}
	}
}

func TestExecWhileStartingConflicts(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	e.host("h1")
	release := make(chan struct{})
	e.fake.OnCreate = func(ctx context.Context, _ hostclient.CreateRequest) error {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}
	var sb Sandbox
	e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"}).decode(t, &sb)
	r := e.do("POST", "/v1/sandboxes/"+sb.ID+"/exec", key, map[string]any{"cmd": "true"})
	if code, _ := r.errCode(t); r.status != 409 || code != CodeConflict {
		t.Fatalf("%d %s", r.status, r.body)
	}
	close(release)
	e.waitStatus(key, sb.ID, "running")
}

// Deleting while the host is still booting the sandbox: the destroy finds
// nothing yet, the sandbox is stopped, and the late create result loses its
// compare-and-set and destroys what it made, leaving nothing on the host.
func TestDeleteWhileStarting(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	e.host("h1")
	release := make(chan struct{})
	e.fake.OnCreate = func(ctx context.Context, _ hostclient.CreateRequest) error {
		<-release
		return nil
	}
	var sb Sandbox
	e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"}).decode(t, &sb)
	if r := e.do("DELETE", "/v1/sandboxes/"+sb.ID, key, nil); r.status != 202 {
		t.Fatalf("delete: %d", r.status)
	}
	e.waitStatus(key, sb.ID, "stopped")
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for e.fake.Calls("DestroySandbox") < 2 || e.fake.Has(sb.ID) {
		if time.Now().After(deadline) {
			t.Fatalf("sandbox left on host (destroy calls %d)", e.fake.Calls("DestroySandbox"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := e.waitStatus(key, sb.ID, "stopped"); got.Status != "stopped" {
		t.Error("status moved")
	}
}

func TestPlacement(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	if r := e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"}); r.status != 503 {
		t.Fatalf("no host: %d %s", r.status, r.body)
	}
	busy := e.host("busy")
	for range 2 {
		var sb Sandbox
		e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"}).decode(t, &sb)
		if sb.HostID != busy {
			t.Fatalf("placed on %s", sb.HostID)
		}
	}
	idle := e.host("idle")
	var sb Sandbox
	e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"}).decode(t, &sb)
	if sb.HostID != idle {
		t.Errorf("placed on %s, want the idle host %s", sb.HostID, idle)
	}
	// Hosts silent for more than 90 s take nothing.
	e.clock.Add(91 * time.Second)
	if r := e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"}); r.status != 503 {
		t.Errorf("stale hosts: %d", r.status)
	}
}

// Wait returns only after background work finished, and work started after
// shutdown began is refused rather than lost.
func TestShutdownWaitsForBackgroundWork(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	e.host("h1")
	release := make(chan struct{})
	entered := make(chan struct{})
	e.fake.OnCreate = func(ctx context.Context, _ hostclient.CreateRequest) error {
		close(entered)
		<-release
		return nil
	}
	var sb Sandbox
	e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"}).decode(t, &sb)
	<-entered
	waited := make(chan error, 1)
	go func() { waited <- e.api.Wait(context.Background()) }()
	select {
	case err := <-waited:
		t.Fatalf("Wait returned while a create ran: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if r := e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"}); r.status != 503 {
		t.Errorf("create during shutdown: %d", r.status)
	}
	close(release)
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	got, err := e.q.GetSandbox(context.Background(), db.GetSandboxParams{ID: sb.ID, TeamID: sbTeam(t, e, sb.ID)})
	must(t, err)
	if got.Status != "running" {
		t.Errorf("after Wait the sandbox is %s, want running", got.Status)
	}
}

// A Wait whose deadline passes cancels the remaining work, which still
// records a truthful outcome before Wait returns.
func TestShutdownDeadlineCancelsWork(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	e.host("h1")
	e.fake.OnCreate = func(ctx context.Context, _ hostclient.CreateRequest) error {
		<-ctx.Done()
		return &hostclient.Error{Op: "create sandbox", Class: hostclient.ErrTimeout, Err: ctx.Err()}
	}
	var sb Sandbox
	e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"}).decode(t, &sb)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := e.api.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait: %v", err)
	}
	got, err := e.q.GetSandbox(context.Background(), db.GetSandboxParams{ID: sb.ID, TeamID: sbTeam(t, e, sb.ID)})
	must(t, err)
	if got.Status != "error" {
		t.Errorf("cancelled create left status %s", got.Status)
	}
}

func sbTeam(t *testing.T, e *env, sid string) string {
	var team string
	must(t, e.pool.QueryRow(context.Background(), "SELECT team_id FROM sandboxes WHERE id = $1", sid).Scan(&team))
	return team
}

// Redis being down fails nothing: the lifecycle completes and only the
// events are lost (the monitor is the safety net).
func TestRedisDownDoesNotFailOperations(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(e *env, d *Deps) {
		d.Events = failingPublisher{}
	})
	_, key := e.team(false)
	e.host("h1")
	var sb Sandbox
	r := e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"})
	if r.status != 202 {
		t.Fatal(r.status)
	}
	r.decode(t, &sb)
	e.waitStatus(key, sb.ID, "running")
	if r := e.do("DELETE", "/v1/sandboxes/"+sb.ID, key, nil); r.status != 202 {
		t.Fatal(r.status)
	}
	e.waitStatus(key, sb.ID, "stopped")
}

type failingPublisher struct{}

func (failingPublisher) Publish(context.Context, events.Event) error {
	return errors.New("redis: connection refused")
}

package api

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/id"
)

// hostWithToken registers an online host and returns its id and the bearer
// token an agent would hold.
func (e *env) hostWithToken(name string) (hostID, token string) {
	e.t.Helper()
	ctx := context.Background()
	reg := "wrr_" + id.Secret(8)
	exp := e.clock.Now().Add(time.Hour)
	h, err := e.q.CreateHost(ctx, db.CreateHostParams{ID: id.New(id.Host), Name: name, RegistrationTokenHash: ptr(hashSecret(reg)), RegistrationExpiresAt: &exp})
	must(e.t, err)
	token = "wrh_" + id.Secret(16)
	_, err = e.q.RegisterHost(ctx, db.RegisterHostParams{
		RegistrationTokenHash: ptr(hashSecret(reg)), TokenHash: ptr(hashSecret(token)), Address: "http://127.0.0.1:1", Runtime: "fake",
		Vcpus: 8, MemoryMb: 16384, DiskMb: 100000, Now: ptr(e.clock.Now()),
	})
	must(e.t, err)
	return h.ID, token
}

// insertSandbox stores a sandbox on hostID with the given status, as the
// CAS queries would have left it.
func (e *env) insertSandbox(teamID, hostID, status string) string {
	e.t.Helper()
	ctx := context.Background()
	sid := id.New(id.Sandbox)
	_, err := e.q.InsertSandbox(ctx, db.InsertSandboxParams{ID: sid, TeamID: teamID, HostID: hostID, Template: "minimal", Vcpus: 1, MemoryMb: 512, TimeoutSec: 300})
	must(e.t, err)
	if status != "starting" {
		_, err = e.pool.Exec(ctx, "UPDATE sandboxes SET status = $2 WHERE id = $1", sid, status)
		must(e.t, err)
	}
	return sid
}

func (e *env) status(sid string) string {
	e.t.Helper()
	var s string
	must(e.t, e.pool.QueryRow(context.Background(), "SELECT status FROM sandboxes WHERE id = $1", sid).Scan(&s))
	return s
}

func TestHostSandboxEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withRedis)
	teamID, _ := e.team(false)
	hostA, tokA := e.hostWithToken("a")
	hostB, tokB := e.hostWithToken("b")
	post := func(token string, body any) resp {
		return e.do("POST", "/v1/hosts/sandbox-events", "", body, "Authorization", "Bearer "+token)
	}
	ev := func(sid, typ, errMsg string) map[string]any {
		return map[string]any{"event_id": "evt-" + id.Secret(6), "sandbox_id": sid, "type": typ, "time": time.Now().UTC().Format(time.RFC3339), "error": errMsg}
	}

	t.Run("auth and validation", func(t *testing.T) {
		sid := e.insertSandbox(teamID, hostA, "running")
		cases := []struct {
			name  string
			token string
			body  any
			want  int
		}{
			{"no token", "", ev(sid, "died", ""), 401},
			{"bad token", "wrh_nope", ev(sid, "died", ""), 401},
			{"other host's sandbox", tokB, ev(sid, "died", ""), 404},
			{"unknown sandbox", tokA, ev(id.New(id.Sandbox), "died", ""), 404},
			{"bad type", tokA, ev(sid, "exploded", ""), 400},
			{"no event id", tokA, map[string]any{"sandbox_id": sid, "type": "died"}, 400},
			{"bad sandbox id", tokA, ev("nope", "died", ""), 400},
		}
		for _, c := range cases {
			var r resp
			if c.token == "" {
				r = e.do("POST", "/v1/hosts/sandbox-events", "", c.body)
			} else {
				r = post(c.token, c.body)
			}
			if r.status != c.want {
				t.Errorf("%s: %d %s, want %d", c.name, r.status, r.body, c.want)
			}
		}
		if got := e.status(sid); got != "running" {
			t.Errorf("refused events changed the sandbox to %s", got)
		}
	})

	tests := []struct {
		name, from, typ, errMsg, want string
	}{
		{"auto-pause running", "running", "auto_paused", "", "paused"},
		{"auto-pause during a user pause", "pausing", "auto_paused", "", "paused"},
		{"auto-pause of stopped changes nothing", "stopped", "auto_paused", "", "stopped"},
		{"died running", "running", "died", "", "stopped"},
		{"died paused", "paused", "died", "", "stopped"},
		{"died missing", "missing", "died", "", "stopped"},
		{"died with error", "running", "died", "init exited 137", "error"},
		{"destroyed with error", "pausing", "destroyed", "freeze: EBUSY", "error"},
		{"died after stop", "stopped", "died", "", "stopped"},
		{"died in error", "error", "died", "", "stopped"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sid := e.insertSandbox(teamID, hostB, tc.from)
			r := post(tokB, ev(sid, tc.typ, tc.errMsg))
			if r.status != http.StatusOK {
				t.Fatalf("%d %s", r.status, r.body)
			}
			if got := e.status(sid); got != tc.want {
				t.Errorf("status %s, want %s", got, tc.want)
			}
		})
	}

	t.Run("dedup", func(t *testing.T) {
		sid := e.insertSandbox(teamID, hostA, "running")
		first := ev(sid, "auto_paused", "")
		if r := post(tokA, first); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		// The sandbox is resumed; a redelivery of the old event must not
		// pause it again.
		_, err := e.pool.Exec(context.Background(), "UPDATE sandboxes SET status = 'running' WHERE id = $1", sid)
		must(t, err)
		r := post(tokA, first)
		var out struct{ Duplicate, Applied bool }
		r.decode(t, &out)
		if r.status != 200 || !out.Duplicate || out.Applied {
			t.Fatalf("redelivery: %d %s", r.status, r.body)
		}
		if got := e.status(sid); got != "running" {
			t.Errorf("redelivered event applied again: %s", got)
		}
		// The event went to the stream once, from the agent.
		msgs, err := e.redis.XRange(context.Background(), events.Stream, "-", "+").Result()
		must(t, err)
		n := 0
		for _, m := range msgs {
			got, err := events.Decode(m.Values)
			must(t, err)
			if got.SandboxID == sid {
				n++
				if got.Actor != "agent" || got.HostID != hostA || got.From != "running" || got.To != "paused" {
					t.Errorf("event %+v", got)
				}
			}
		}
		if n != 1 {
			t.Errorf("%d events for the sandbox, want 1", n)
		}
	})
}

package monitor

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/wrenn/wrenn/internal/api"
	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/internal/testenv"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type env struct {
	t      *testing.T
	pool   *pgxpool.Pool
	q      *db.Queries
	fake   *hostclient.Fake
	clock  *clock
	mon    *Monitor
	teamID string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	pool := testenv.MigratedPostgres(t)
	e := &env{t: t, pool: pool, q: db.New(pool), fake: hostclient.NewFake(), clock: &clock{t: time.Now().UTC()}}
	e.mon = New(Options{DB: pool, Agents: e.fake, Now: e.clock.Now})
	e.teamID = id.New(id.Team)
	must(t, e.q.CreateTeam(ctx, db.CreateTeamParams{ID: e.teamID, Name: "t"}))
	return e
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// host registers an online host that just sent a heartbeat and returns its
// id and token.
func (e *env) host(name string) (string, string) {
	e.t.Helper()
	ctx := context.Background()
	reg, tok := "wrr_"+id.Secret(8), "wrh_"+id.Secret(8)
	exp := e.clock.Now().Add(time.Hour)
	h, err := e.q.CreateHost(ctx, db.CreateHostParams{ID: id.New(id.Host), Name: name, RegistrationTokenHash: &reg, RegistrationExpiresAt: &exp})
	must(e.t, err)
	now := e.clock.Now()
	_, err = e.q.RegisterHost(ctx, db.RegisterHostParams{RegistrationTokenHash: &reg, TokenHash: &tok, Address: "http://127.0.0.1:1", Runtime: "fake", Vcpus: 8, MemoryMb: 16384, DiskMb: 100000, Now: &now})
	must(e.t, err)
	return h.ID, tok
}

func (e *env) heartbeat(tok string) {
	e.t.Helper()
	now := e.clock.Now()
	_, err := e.q.HeartbeatHost(context.Background(), db.HeartbeatHostParams{TokenHash: &tok, Address: "http://127.0.0.1:1", Runtime: "fake", Vcpus: 8, MemoryMb: 16384, DiskMb: 100000, Now: &now})
	must(e.t, err)
}

// sandbox stores a sandbox with status on hostID and, when onHost is not
// "", makes the fake host run it in that state ("running" or "paused").
func (e *env) sandbox(hostID, status, onHost string) string {
	e.t.Helper()
	ctx := context.Background()
	sid := id.New(id.Sandbox)
	_, err := e.q.InsertSandbox(ctx, db.InsertSandboxParams{ID: sid, TeamID: e.teamID, HostID: hostID, Template: "minimal", Vcpus: 1, MemoryMb: 512, TimeoutSec: 300})
	must(e.t, err)
	_, err = e.pool.Exec(ctx, "UPDATE sandboxes SET status = $2 WHERE id = $1", sid, status)
	must(e.t, err)
	if onHost != "" {
		_, err := e.fake.CreateSandbox(ctx, hostclient.CreateRequest{SandboxID: sid})
		must(e.t, err)
		if onHost == "paused" {
			_, err := e.fake.PauseSandbox(ctx, sid)
			must(e.t, err)
		}
	}
	return sid
}

// apiKey makes an owner of the env's team and returns an API key for it.
func (e *env) apiKey() string {
	e.t.Helper()
	ctx := context.Background()
	userID, key := id.New(id.User), id.NewAPIKey()
	must(e.t, e.q.CreateUser(ctx, db.CreateUserParams{ID: userID, Email: userID + "@example.com"}))
	must(e.t, e.q.AddTeamMember(ctx, db.AddTeamMemberParams{TeamID: e.teamID, UserID: userID, Role: "owner"}))
	must(e.t, e.q.CreateAPIKey(ctx, db.CreateAPIKeyParams{ID: id.New(id.APIKey), TeamID: e.teamID, UserID: userID, Name: "k", KeyHash: api.HashSecret(key), KeyPrefix: key[:8]}))
	return key
}

func (e *env) row(sid string) db.Sandbox {
	e.t.Helper()
	sb, err := e.q.GetSandbox(context.Background(), db.GetSandboxParams{ID: sid, TeamID: e.teamID})
	must(e.t, err)
	return sb
}

func (e *env) pass() {
	e.t.Helper()
	ran, err := e.mon.RunOnce(context.Background())
	must(e.t, err)
	if !ran {
		e.t.Fatal("pass did not run")
	}
}

func TestUnreachableHostThenBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	hostID, tok := e.host("h")
	run := e.sandbox(hostID, "running", "running")
	paused := e.sandbox(hostID, "paused", "paused")
	gone := e.sandbox(hostID, "running", "running")
	stopped := e.sandbox(hostID, "stopped", "")

	// 60 s of silence is within the heartbeat window.
	e.clock.Add(60 * time.Second)
	e.pass()
	if got := e.row(run).Status; got != "running" {
		t.Fatalf("after 60 s: %s", got)
	}
	e.clock.Add(31 * time.Second)
	e.fake.OnList = func(context.Context) error {
		return &hostclient.Error{Op: "list sandboxes", Class: hostclient.ErrUnavailable}
	}
	e.pass()
	h, err := e.q.GetHost(context.Background(), hostID)
	must(t, err)
	if h.Status != "unreachable" {
		t.Errorf("host %s", h.Status)
	}
	for sid, was := range map[string]string{run: "running", paused: "paused", gone: "running"} {
		sb := e.row(sid)
		if sb.Status != "missing" || sb.MissingFrom == nil || *sb.MissingFrom != was {
			t.Errorf("%s: %s (was %v), want missing from %s", sid, sb.Status, sb.MissingFrom, was)
		}
	}
	if got := e.row(stopped).Status; got != "stopped" {
		t.Errorf("stopped sandbox became %s", got)
	}
	// A second pass while it is still away changes nothing.
	e.pass()

	// The host returns without one of them.
	e.fake.OnList = nil
	e.fake.Vanish(gone)
	e.heartbeat(tok)
	e.pass()
	for sid, want := range map[string]string{run: "running", paused: "paused", gone: "stopped", stopped: "stopped"} {
		if got := e.row(sid).Status; got != want {
			t.Errorf("%s after return: %s, want %s", sid, got, want)
		}
	}
}

func TestStableStatusesFollowTheHost(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	hostID, _ := e.host("h")
	autoPaused := e.sandbox(hostID, "running", "running")
	vanished := e.sandbox(hostID, "running", "running")
	pausedGone := e.sandbox(hostID, "paused", "paused")
	fine := e.sandbox(hostID, "running", "running")
	if !e.fake.AutoPause(autoPaused) {
		t.Fatal("auto-pause")
	}
	e.fake.Vanish(vanished)
	e.fake.Vanish(pausedGone)
	e.pass()
	for sid, want := range map[string]string{autoPaused: "paused", vanished: "stopped", pausedGone: "stopped", fine: "running"} {
		if got := e.row(sid).Status; got != want {
			t.Errorf("%s: %s, want %s", sid, got, want)
		}
	}
	if sb := e.row(vanished); sb.StoppedAt == nil || !sb.StoppedAt.Equal(e.clock.Now().Truncate(time.Microsecond)) {
		t.Errorf("stopped_at %v, want the injected clock's %v", sb.StoppedAt, e.clock.Now())
	}
}

func TestStuckTransientStatusesSettle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	hostID, tok := e.host("h")
	tests := []struct {
		name, status, onHost, want string
	}{
		{"starting, host runs it", "starting", "running", "running"},
		{"starting, host has nothing", "starting", "", "error"},
		{"pausing, host paused it", "pausing", "paused", "paused"},
		{"pausing, host still runs it", "pausing", "running", "running"},
		{"resuming, host runs it", "resuming", "running", "running"},
		{"resuming, host kept it paused", "resuming", "paused", "paused"},
		{"resuming, host has nothing", "resuming", "", "stopped"},
		{"stopping, host still has it", "stopping", "running", "stopped"},
		{"stopping, host has nothing", "stopping", "", "stopped"},
		{"snapshotting, host has nothing", "snapshotting", "", "stopped"},
	}
	ids := make([]string, len(tests))
	for i, tc := range tests {
		ids[i] = e.sandbox(hostID, tc.status, tc.onHost)
	}
	// Within the grace period nothing transient is touched.
	e.pass()
	for i, tc := range tests {
		if got := e.row(ids[i]).Status; got != tc.status {
			t.Errorf("%s: settled to %s within the grace period", tc.name, got)
		}
	}
	e.clock.Add(3*time.Minute + time.Second)
	e.heartbeat(tok)
	e.pass()
	for i, tc := range tests {
		sb := e.row(ids[i])
		if sb.Status != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, sb.Status, tc.want)
		}
		if tc.status == "starting" && tc.want == "running" && (sb.EnvdVersion != "fake-1" || sb.StartedAt == nil) {
			t.Errorf("%s: running without the host's details: %+v", tc.name, sb)
		}
		if tc.status == "stopping" && e.fake.Has(ids[i]) {
			t.Errorf("%s: still on the host", tc.name)
		}
	}
}

// Only one replica runs a pass at a time.
func TestPassIsExclusive(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	conn, err := e.pool.Acquire(ctx)
	must(t, err)
	defer conn.Release()
	var got bool
	must(t, conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", lockKey).Scan(&got))
	if !got {
		t.Fatal("could not take the lock")
	}
	ran, err := e.mon.RunOnce(ctx)
	if err != nil || ran {
		t.Fatalf("ran=%v err=%v while another replica holds the lock", ran, err)
	}
	_, err = conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", lockKey)
	must(t, err)
	if ran, err := e.mon.RunOnce(ctx); err != nil || !ran {
		t.Fatalf("after release: ran=%v err=%v", ran, err)
	}
}

// A row that went round to the same status after the monitor read it (an
// A-B-A: paused, resumed) is left alone: the monitor's decision rested on a
// read that is stale even though the status compares equal.
func TestStaleReadIsNotApplied(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	hostID, _ := e.host("h")
	sid := e.sandbox(hostID, "running", "paused")
	e.fake.OnList = func(ctx context.Context) error {
		// Between the monitor's read and its write, through the same
		// compare-and-set queries the API uses.
		sb := e.row(sid)
		for _, to := range []lifecycle.Status{lifecycle.Pausing, lifecycle.Paused, lifecycle.Resuming, lifecycle.Running} {
			var err error
			sb, err = e.q.UpdateSandboxStatusIf(ctx, db.UpdateSandboxStatusIfParams{ID: sid, TeamID: e.teamID, Expected: sb.Status, Generation: sb.Generation, Status: string(to)})
			if err != nil {
				return err
			}
		}
		return nil
	}
	e.pass()
	if got := e.row(sid).Status; got != "running" {
		t.Fatalf("stale decision applied: %s", got)
	}
	e.fake.OnList = nil
	e.pass()
	if got := e.row(sid).Status; got != "paused" {
		t.Fatalf("fresh decision not applied: %s", got)
	}
}

// A writer that outlived the grace period: the monitor settles its stuck
// pause from the host's list, then the writer's late outcome (published
// and applied with the generation its pause began at) changes nothing,
// neither from the writer nor replayed by the consumer, and the next pass
// brings the row to what the late pause did on the host.
func TestLateWriterAfterMonitorSettle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	hostID, tok := e.host("h")
	ctx := context.Background()
	sid := e.sandbox(hostID, "pausing", "running")
	stuck := e.row(sid)
	e.clock.Add(time.Since(e.clock.Now()) + 3*time.Minute + time.Second)
	e.heartbeat(tok)
	e.pass()
	settled := e.row(sid)
	if settled.Status != "running" || settled.Generation != stuck.Generation+1 {
		t.Fatalf("monitor left %s at %d, want running at %d", settled.Status, settled.Generation, stuck.Generation+1)
	}
	// The host finishes the pause after all; the writer records it.
	_, err := e.fake.PauseSandbox(ctx, sid)
	must(t, err)
	late := events.Event{SandboxID: sid, TeamID: e.teamID, HostID: hostID, From: lifecycle.Pausing, To: lifecycle.Paused, Generation: stuck.Generation, Actor: "worker", Time: e.clock.Now()}
	for range 2 {
		moved, err := api.ApplyTransition(ctx, e.q, late)
		must(t, err)
		if moved {
			t.Fatal("the late outcome of a settled pause was recorded")
		}
	}
	if got := e.row(sid); got.Status != "running" || got.Generation != settled.Generation {
		t.Fatalf("after the late outcome: %s at %d", got.Status, got.Generation)
	}
	e.heartbeat(tok)
	e.pass()
	if got := e.row(sid).Status; got != "paused" {
		t.Errorf("next pass: %s, want paused as on the host", got)
	}
}

// A create that failed on the host becomes error only when the host
// confirms nothing is left. When the cleanup cannot reach the host either,
// the host may have made the sandbox after all (its answer was lost): the
// sandbox stays starting and the monitor settles it from the host's list,
// running if the host has it, error if not.
func TestFailedCreateWithoutCleanupIsLeftToTheMonitor(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, tok := e.host("h")
	key := e.apiKey()
	e.fake.OnCreate = func(context.Context, hostclient.CreateRequest) error {
		return &hostclient.Error{Op: "create sandbox", Class: hostclient.ErrTimeout, Err: context.DeadlineExceeded}
	}
	e.fake.OnDestroy = func(context.Context, string) error {
		return &hostclient.Error{Op: "destroy sandbox", Class: hostclient.ErrUnavailable}
	}
	a := api.New(api.Deps{DB: e.pool, Agents: e.fake, Now: e.clock.Now, AgentTimeout: 10 * time.Second})
	h := a.Handler()
	create := func() string {
		req := httptest.NewRequest("POST", "/v1/sandboxes", stringsReader(`{"template":"minimal"}`))
		req.Header.Set("X-API-Key", key)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		var sb api.Sandbox
		if w.Code != http.StatusAccepted || json.Unmarshal(w.Body.Bytes(), &sb) != nil {
			t.Fatalf("create: %d %s", w.Code, w.Body)
		}
		return sb.ID
	}
	made, lost := create(), create()
	must(t, a.Wait(context.Background()))
	for _, sid := range []string{made, lost} {
		if st := e.row(sid).Status; st != "starting" {
			t.Fatalf("failed create without cleanup recorded %s", st)
		}
	}
	// The host did make one of them.
	e.fake.OnCreate, e.fake.OnDestroy = nil, nil
	_, err := e.fake.CreateSandbox(context.Background(), hostclient.CreateRequest{SandboxID: made})
	must(t, err)
	e.clock.Add(time.Since(e.clock.Now()) + 3*time.Minute + time.Second)
	e.heartbeat(tok)
	e.pass()
	if st := e.row(made).Status; st != "running" {
		t.Errorf("the sandbox the host made is %s", st)
	}
	if sb := e.row(lost); sb.Status != "error" || sb.Error == "" {
		t.Errorf("the sandbox the host never made is %s (%q)", sb.Status, sb.Error)
	}
}

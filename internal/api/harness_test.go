package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/internal/testenv"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/id"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// clock is an injected, settable clock.
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
	t     testing.TB
	pool  *pgxpool.Pool
	q     *db.Queries
	api   *API
	h     http.Handler
	fake  *hostclient.Fake
	clock *clock
	redis *redis.Client // nil unless withRedis
}

type envOpt func(*env, *Deps)

// withRedis publishes events to a real Redis server.
func withRedis(e *env, d *Deps) {
	opts, err := redis.ParseURL(testenv.Redis(e.t))
	if err != nil {
		e.t.Fatal(err)
	}
	e.redis = redis.NewClient(opts)
	e.t.Cleanup(func() { e.redis.Close() })
	d.Events = events.NewRedisPublisher(e.redis)
}

func newEnv(t testing.TB, opts ...envOpt) *env {
	t.Helper()
	pool := testenv.MigratedPostgres(t)
	e := &env{t: t, pool: pool, q: db.New(pool), fake: hostclient.NewFake(), clock: &clock{t: time.Now().UTC().Truncate(time.Microsecond)}}
	d := Deps{DB: pool, Agents: e.fake, Now: e.clock.Now, AgentTimeout: 10 * time.Second}
	for _, o := range opts {
		o(e, &d)
	}
	e.api = New(d)
	e.h = e.api.Handler()
	// Background work must be finished before the pool closes.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := e.api.Wait(ctx); err != nil {
			t.Errorf("background work still running at cleanup: %v", err)
		}
	})
	return e
}

// team creates a team with a user and an API key and returns both ids.
func (e *env) team(admin bool) (teamID, key string) {
	e.t.Helper()
	ctx := context.Background()
	teamID, userID, key := id.New(id.Team), id.New(id.User), id.NewAPIKey()
	must(e.t, e.q.CreateTeam(ctx, db.CreateTeamParams{ID: teamID, Name: "t"}))
	must(e.t, e.q.CreateUser(ctx, db.CreateUserParams{ID: userID, Email: userID + "@example.com", IsAdmin: admin}))
	must(e.t, e.q.AddTeamMember(ctx, db.AddTeamMemberParams{TeamID: teamID, UserID: userID, Role: "owner"}))
	must(e.t, e.q.CreateAPIKey(ctx, db.CreateAPIKeyParams{ID: id.New(id.APIKey), TeamID: teamID, UserID: userID, Name: "k", KeyHash: hashSecret(key), KeyPrefix: key[:8]}))
	return teamID, key
}

// host registers an online host through the API's own queries.
func (e *env) host(name string) string {
	e.t.Helper()
	ctx := context.Background()
	tok := "wrr_" + id.Secret(8)
	exp := e.clock.Now().Add(time.Hour)
	h, err := e.q.CreateHost(ctx, db.CreateHostParams{ID: id.New(id.Host), Name: name, RegistrationTokenHash: &tok, RegistrationExpiresAt: &exp})
	must(e.t, err)
	hostTok := "wrh_" + id.Secret(8)
	_, err = e.q.RegisterHost(ctx, db.RegisterHostParams{
		RegistrationTokenHash: &tok, TokenHash: &hostTok, Address: "http://127.0.0.1:1", Runtime: "fake",
		Vcpus: 8, MemoryMb: 16384, DiskMb: 100000, Now: ptr(e.clock.Now()),
	})
	must(e.t, err)
	return h.ID
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type resp struct {
	status int
	body   []byte
	hdr    http.Header
}

func (r resp) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// errCode returns the error body's code and message.
func (r resp) errCode(t testing.TB) (string, string) {
	t.Helper()
	var b errorBody
	r.decode(t, &b)
	return b.Error.Code, b.Error.Message
}

// do sends a request; body may be a string (sent raw) or a value (JSON).
func (e *env) do(method, path, key string, body any, hdrs ...string) resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		must(e.t, err)
		rd = bytes.NewReader(j)
	}
	req := httptest.NewRequest(method, path, rd)
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	for i := 0; i+1 < len(hdrs); i += 2 {
		req.Header.Set(hdrs[i], hdrs[i+1])
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, req)
	return resp{status: w.Code, body: w.Body.Bytes(), hdr: w.Header()}
}

// waitStatus polls the sandbox until it has status want.
func (e *env) waitStatus(key, sid, want string) Sandbox {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := e.do("GET", "/v1/sandboxes/"+sid, key, nil)
		var sb Sandbox
		r.decode(e.t, &sb)
		if sb.Status == want {
			return sb
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("sandbox %s is %s, never became %s", sid, sb.Status, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *env) countSandboxes() int {
	e.t.Helper()
	var n int
	must(e.t, e.pool.QueryRow(context.Background(), "SELECT count(*) FROM sandboxes").Scan(&n))
	return n
}

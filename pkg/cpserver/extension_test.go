package cpserver

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/redis/go-redis/v9"
	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/internal/testenv"
	"github.com/wrenn/wrenn/pkg/config"
	"github.com/wrenn/wrenn/pkg/cpextension"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// hookExt is a fake extension with every optional interface: it counts the
// events its hook sees, fails for sandboxes in failFor until told
// otherwise, and marks every response with a header.
type hookExt struct {
	mu      sync.Mutex
	calls   map[string]int
	failFor map[string]bool
}

var (
	_ cpextension.Extension          = (*hookExt)(nil)
	_ cpextension.SandboxEventHook   = (*hookExt)(nil)
	_ cpextension.MiddlewareProvider = (*hookExt)(nil)
)

func (x *hookExt) Name() string                                           { return "hook-test" }
func (x *hookExt) Init(context.Context, *cpextension.ServerContext) error { return nil }
func (x *hookExt) RegisterRoutes(r chi.Router) {
	r.Get("/ext/ping", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "pong") })
}
func (x *hookExt) BackgroundWorkers() []cpextension.Worker { return nil }

func (x *hookExt) Middlewares() []func(http.Handler) http.Handler {
	return []func(http.Handler) http.Handler{func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Hook-Test", "seen")
			next.ServeHTTP(w, r)
		})
	}}
}

func (x *hookExt) OnSandboxEvent(_ context.Context, e events.Event) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.calls[e.SandboxID]++
	if x.failFor[e.SandboxID] {
		return errors.New("scripted hook failure")
	}
	return nil
}

func (x *hookExt) count(sid string) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.calls[sid]
}

func (x *hookExt) heal(sid string) {
	x.mu.Lock()
	delete(x.failFor, sid)
	x.mu.Unlock()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Run wires extensions' hooks into the event consumer (once per event; a
// failing hook leaves the event pending until it is claimed again) and
// their middlewares around every route, and serves /metrics.
func TestExtensionHooksAndMiddleware(t *testing.T) {
	t.Parallel()
	redisURL := testenv.Redis(t)
	cfg := config.ControlPlane{Dir: t.TempDir(), Listen: "127.0.0.1:0", DatabaseURL: testenv.Postgres(t), RedisURL: redisURL, BootstrapAPIKey: id.NewAPIKey(), BootstrapAdminEmail: "a@b.c"}
	ropts, _ := redis.ParseURL(redisURL)
	rdb := redis.NewClient(ropts)
	defer rdb.Close()
	bg := context.Background()
	// The group exists before anything is published, whoever creates it.
	if err := rdb.XGroupCreateMkStream(bg, events.Stream, events.DefaultGroup, "$").Err(); err != nil {
		t.Fatal(err)
	}
	ok1, ok2, bad := id.New(id.Sandbox), id.New(id.Sandbox), id.New(id.Sandbox)
	ext := &hookExt{calls: map[string]int{}, failFor: map[string]bool{bad: true}}
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	ready := make(chan net.Addr, 1)
	go func() {
		done <- Run(ctx, WithConfig(cfg), WithStderr(io.Discard), WithAgentDialer(hostclient.NewFake()),
			WithExtensions(ext), WithEventClaimIdle(300*time.Millisecond), WithReady(func(a net.Addr) { ready <- a }))
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	// Events of sandboxes the database does not know: the built-in writer
	// ignores them (idempotent), the hook still sees each.
	pub := events.NewRedisPublisher(rdb)
	for _, sid := range []string{ok1, ok2, bad} {
		if err := pub.Publish(bg, events.Event{SandboxID: sid, TeamID: "team-x", From: lifecycle.Running, To: lifecycle.Pausing, Actor: "test", Time: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	pendingCount := func() int64 {
		p, err := rdb.XPending(bg, events.Stream, events.DefaultGroup).Result()
		if err != nil {
			t.Fatal(err)
		}
		return p.Count
	}
	waitFor(t, "the hook to see every event", func() bool { return ext.count(ok1) >= 1 && ext.count(ok2) >= 1 && ext.count(bad) >= 1 })
	if p := pendingCount(); p != 1 {
		t.Errorf("%d events pending, want 1 (the one whose hook fails)", p)
	}
	// Still failing: it is claimed again and again, never acknowledged.
	waitFor(t, "the failing event to be redelivered", func() bool { return ext.count(bad) >= 2 })
	if p := pendingCount(); p != 1 {
		t.Errorf("%d events pending while the hook fails, want 1", p)
	}
	ext.heal(bad)
	waitFor(t, "the healed event to be acknowledged", func() bool { return pendingCount() == 0 })
	if ext.count(ok1) != 1 || ext.count(ok2) != 1 {
		t.Errorf("hook saw the good events %d and %d times, want once each", ext.count(ok1), ext.count(ok2))
	}

	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	for _, path := range []string{"/healthz", "/ext/ping", "/v1/sandboxes", "/metrics"} {
		resp, err := client.Get("http://" + addr.String() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.Header.Get("X-Hook-Test") != "seen" {
			t.Errorf("%s: the extension's middleware did not run (%d)", path, resp.StatusCode)
		}
		if path == "/metrics" {
			for _, series := range []string{"wrenn_event_consumer_lag_seconds ", "wrenn_event_consumer_lag_max_seconds ", `wrenn_http_request_duration_seconds_count{code="2xx",method="GET",route="/healthz"} 1`} {
				if !strings.Contains(string(body), series) {
					t.Errorf("/metrics lacks %q", series)
				}
			}
		}
	}
}

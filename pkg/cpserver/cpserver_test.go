package cpserver

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/internal/testenv"
	"github.com/wrenn/wrenn/pkg/config"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func counts(t *testing.T, pool *pgxpool.Pool) (users, teams, keys, members int) {
	t.Helper()
	err := pool.QueryRow(context.Background(),
		"SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM teams), (SELECT count(*) FROM api_keys), (SELECT count(*) FROM team_members)").
		Scan(&users, &teams, &keys, &members)
	if err != nil {
		t.Fatal(err)
	}
	return
}

func TestBootstrapIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	logs := &syncBuf{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	if err := Migrate(ctx, pool, log); err != nil {
		t.Fatal(err)
	}
	key := id.NewAPIKey()
	// Replicas starting together bootstrap once.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = Bootstrap(ctx, pool, key, "root@example.com", log) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if u, tm, k, m := counts(t, pool); u != 1 || tm != 1 || k != 1 || m != 1 {
		t.Fatalf("after bootstrap: %d users %d teams %d keys %d members", u, tm, k, m)
	}
	var admin bool
	var role, stored, prefix string
	err = pool.QueryRow(ctx, `SELECT u.is_admin, m.role, k.key_hash, k.key_prefix FROM users u
		JOIN team_members m ON m.user_id = u.id JOIN api_keys k ON k.user_id = u.id WHERE u.email = 'root@example.com'`).Scan(&admin, &role, &stored, &prefix)
	if err != nil {
		t.Fatal(err)
	}
	if !admin || role != "owner" || stored == key || len(stored) != 64 || !strings.HasPrefix(key, strings.TrimSuffix(prefix, "…")) {
		t.Errorf("admin=%v role=%s hash=%s prefix=%s", admin, role, stored, prefix)
	}
	// Same key again: nothing changes, nothing is said.
	if err := Bootstrap(ctx, pool, key, "root@example.com", log); err != nil {
		t.Fatal(err)
	}
	if u, tm, k, _ := counts(t, pool); u != 1 || tm != 1 || k != 1 {
		t.Fatal("second bootstrap changed the database")
	}
	if strings.Contains(logs.String(), "WARN") {
		t.Errorf("warned on an idempotent bootstrap: %s", logs)
	}
	// Another key on a populated database: warning, nothing created.
	if err := Bootstrap(ctx, pool, id.NewAPIKey(), "other@example.com", log); err != nil {
		t.Fatal(err)
	}
	if u, tm, k, _ := counts(t, pool); u != 1 || tm != 1 || k != 1 {
		t.Fatal("bootstrap with a new key on a populated database changed it")
	}
	if !strings.Contains(logs.String(), "WARN") {
		t.Error("no warning for an ignored bootstrap key")
	}
}

// Run end to end on real Postgres and Redis with the fake agent: it migrates,
// bootstraps, serves, and on cancel drains, waits for background work and
// returns nil.
func TestRunServesAndShutsDown(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := id.NewAPIKey()
	env := map[string]string{
		"WRENN_DIR":               dir,
		"DATABASE_URL":            testenv.Postgres(t),
		"REDIS_URL":               testenv.Redis(t),
		"WRENN_BOOTSTRAP_API_KEY": key,
		"LOG_LEVEL":               "debug",
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fake := hostclient.NewFake()
	release := make(chan struct{})
	fake.OnCreate = func(ctx context.Context, _ hostclient.CreateRequest) error {
		<-release
		return nil
	}
	stderr := &syncBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx,
			WithEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }),
			WithListener(ln), WithStderr(stderr), WithAgentDialer(fake), WithVersion("test"),
			WithReady(func(a net.Addr) { ready <- a }))
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("Run: %v\n%s", err, stderr)
	case <-time.After(60 * time.Second):
		t.Fatal("not ready")
	}
	call := apiCaller(t, "http://"+addr.String(), key)
	if code := call("GET", "/healthz", "", nil); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	// The bootstrap key is an admin's: register a host through the API.
	var host struct {
		Token string `json:"registration_token"`
	}
	if code := call("POST", "/v1/admin/hosts", `{"name":"h1"}`, &host); code != 201 {
		t.Fatalf("create host %d", code)
	}
	if code := call("POST", "/v1/hosts/register", `{"registration_token":"`+host.Token+`","address":"http://127.0.0.1:1","runtime":"fake"}`, nil); code != 200 {
		t.Fatalf("register %d", code)
	}
	var sb struct{ ID string }
	if code := call("POST", "/v1/sandboxes", `{"template":"minimal"}`, &sb); code != 202 {
		t.Fatalf("create %d", code)
	}

	// Shut down while the create is in flight: Run must wait for it.
	cancel()
	select {
	case err := <-done:
		t.Fatalf("Run returned (%v) while background work ran", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after the work finished")
	}
	// The outcome was recorded before the pool closed.
	pool, err := pgxpool.New(context.Background(), env["DATABASE_URL"])
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var status string
	if err := pool.QueryRow(context.Background(), "SELECT status FROM sandboxes WHERE id = $1", sb.ID).Scan(&status); err != nil || status != "running" {
		t.Fatalf("sandbox %s after shutdown: %q %v", sb.ID, status, err)
	}
	logFile, err := os.ReadFile(filepath.Join(dir, "logs", "control-plane.log"))
	if err != nil || !bytes.Contains(logFile, []byte(`"msg":"sandbox running"`)) {
		t.Errorf("JSON log file lacks the sandbox's start: %v", err)
	}
	if _, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		t.Error("still listening after Run returned")
	}
}

func TestRunReportsBadConfigAndDependencies(t *testing.T) {
	t.Parallel()
	err := Run(context.Background(), WithEnv(func(string) (string, bool) { return "", false }), WithStderr(io.Discard))
	if err == nil || !strings.Contains(err.Error(), "DATABASE_URL is required") {
		t.Errorf("missing config: %v", err)
	}
	port, _ := freePort()
	cfg := config.ControlPlane{Dir: t.TempDir(), Listen: "127.0.0.1:0", DatabaseURL: "postgres://u:p@127.0.0.1:" + port + "/x", RedisURL: "redis://127.0.0.1:1"}
	err = Run(context.Background(), WithConfig(cfg), WithStderr(io.Discard))
	if err == nil || !strings.Contains(err.Error(), "connect to postgres") {
		t.Errorf("unreachable postgres: %v", err)
	}
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	return p, nil
}

// A replica that died after publishing an outcome but before recording it:
// the event consumer of a live replica records it.
func TestConsumerConvergesAfterWriterDied(t *testing.T) {
	t.Parallel()
	dsn, redisURL := testenv.Postgres(t), testenv.Redis(t)
	key := id.NewAPIKey()
	cfg := config.ControlPlane{Dir: t.TempDir(), Listen: "127.0.0.1:0", DatabaseURL: dsn, RedisURL: redisURL, BootstrapAPIKey: key, BootstrapAdminEmail: "a@b.c"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan net.Addr, 1)
	go func() {
		done <- Run(ctx, WithConfig(cfg), WithStderr(io.Discard), WithAgentDialer(hostclient.NewFake()), WithReady(func(a net.Addr) { ready <- a }))
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	bg := context.Background()
	pool, err := pgxpool.New(bg, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var teamID string
	if err := pool.QueryRow(bg, "SELECT team_id FROM api_keys LIMIT 1").Scan(&teamID); err != nil {
		t.Fatal(err)
	}
	q := db.New(pool)
	if _, err := q.CreateHost(bg, db.CreateHostParams{ID: "host-dead", Name: "dead"}); err != nil {
		t.Fatal(err)
	}
	sid := id.New(id.Sandbox)
	inserted, err := q.InsertSandbox(bg, db.InsertSandboxParams{ID: sid, TeamID: teamID, HostID: "host-dead", Template: "minimal", Vcpus: 1, MemoryMb: 512, TimeoutSec: 60})
	if err != nil {
		t.Fatal(err)
	}
	ropts, _ := redis.ParseURL(redisURL)
	rdb := redis.NewClient(ropts)
	defer rdb.Close()
	// The consumer group exists once Run is ready; the dead replica's last act:
	if err := events.NewRedisPublisher(rdb).Publish(bg, events.Event{
		SandboxID: sid, TeamID: teamID, HostID: "host-dead", From: lifecycle.Starting, To: lifecycle.Running, Generation: inserted.Generation, Actor: "worker", Time: time.Now(),
		Running: &events.RunningInfo{HostIP: "10.2.0.1", GuestIP: "10.2.0.2", EnvdVersion: "e", DiskMB: 1, StartedAt: time.Now()},
	}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		sb, err := q.GetSandbox(bg, db.GetSandboxParams{ID: sid, TeamID: teamID})
		if err != nil {
			t.Fatal(err)
		}
		if sb.Status == "running" && sb.HostIp == "10.2.0.1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox still %s: the consumer did not converge it", sb.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

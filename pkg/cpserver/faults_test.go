package cpserver

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/internal/localsvc"
	"github.com/wrenn/wrenn/internal/testenv"
	"github.com/wrenn/wrenn/pkg/config"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// Redis goes down while sandboxes are created and destroyed: the
// operations still answer 202 and are recorded in Postgres (events are
// best effort). Redis then comes back empty on the same port: the consumer
// recreates its group and applies what is published from then on.
func TestRedisDownOperationsCompleteAndConsumerCatchesUp(t *testing.T) {
	t.Parallel()
	if _, err := localsvc.RedisBinary(); err != nil {
		t.Skipf("redis-server is needed: %v", err)
	}
	bg := context.Background()
	rdir := t.TempDir()
	srv, err := localsvc.StartRedis(bg, localsvc.RedisOptions{Dir: rdir})
	if err != nil {
		t.Fatal(err)
	}
	port, redisURL := srv.Port, srv.URL
	stopRedis := func() {
		t.Helper()
		sctx, cancel := context.WithTimeout(bg, 30*time.Second)
		defer cancel()
		if err := srv.Stop(sctx); err != nil {
			t.Errorf("stop redis: %v", err)
		}
		srv = nil
	}
	defer func() {
		if srv != nil {
			stopRedis()
		}
	}()

	dsn, key := testenv.Postgres(t), id.NewAPIKey()
	cfg := config.ControlPlane{Dir: t.TempDir(), Listen: "127.0.0.1:0", DatabaseURL: dsn, RedisURL: redisURL, BootstrapAPIKey: key, BootstrapAdminEmail: "a@b.c"}
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	ready := make(chan net.Addr, 1)
	go func() {
		done <- Run(ctx, WithConfig(cfg), WithStderr(io.Discard), WithAgentDialer(hostclient.NewFake()),
			WithEventClaimIdle(200*time.Millisecond), WithReady(func(a net.Addr) { ready <- a }))
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
	client := &http.Client{Transport: &http.Transport{}, Timeout: 20 * time.Second}
	defer client.CloseIdleConnections()
	call := func(method, path, body string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+addr.String()+path, strings.NewReader(body))
		req.Header.Set("X-API-Key", key)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	code, b := call("POST", "/v1/admin/hosts", `{"name":"h1"}`)
	if code != 201 {
		t.Fatalf("create host %d %s", code, b)
	}
	var host struct {
		Token string `json:"registration_token"`
	}
	_ = json.Unmarshal(b, &host)
	if code, b := call("POST", "/v1/hosts/register", `{"registration_token":"`+host.Token+`","address":"http://127.0.0.1:1","runtime":"fake"}`); code != 200 {
		t.Fatalf("register %d %s", code, b)
	}
	pool, err := pgxpool.New(bg, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	status := func(sid string) string {
		var s string
		if err := pool.QueryRow(bg, "SELECT status FROM sandboxes WHERE id = $1", sid).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	create := func() string {
		t.Helper()
		code, b := call("POST", "/v1/sandboxes", `{"template":"minimal"}`)
		if code != 202 {
			t.Fatalf("create %d %s", code, b)
		}
		var sb struct{ ID string }
		_ = json.Unmarshal(b, &sb)
		return sb.ID
	}
	before := create()
	waitFor(t, "the first sandbox to run", func() bool { return status(before) == "running" })

	stopRedis()
	during := create()
	waitFor(t, "a sandbox created without Redis to run", func() bool { return status(during) == "running" })
	if code, b := call("DELETE", "/v1/sandboxes/"+before, ""); code != 202 {
		t.Fatalf("destroy without Redis: %d %s", code, b)
	}
	waitFor(t, "a sandbox destroyed without Redis to stop", func() bool { return status(before) == "stopped" })
	if code, _ := call("GET", "/healthz", ""); code != 503 {
		t.Errorf("healthz with Redis down: %d, want 503", code)
	}

	// Back, empty, on the same port.
	if srv, err = localsvc.StartRedis(bg, localsvc.RedisOptions{Dir: rdir, Port: port}); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + itoa(port)})
	defer rdb.Close()
	waitFor(t, "the consumer to recreate its group", func() bool {
		groups, err := rdb.XInfoGroups(bg, events.Stream).Result()
		return err == nil && len(groups) == 1 && groups[0].Name == events.DefaultGroup
	})
	// A writer that died after publishing: only the consumer can record it.
	var teamID string
	if err := pool.QueryRow(bg, "SELECT team_id FROM sandboxes WHERE id = $1", during).Scan(&teamID); err != nil {
		t.Fatal(err)
	}
	orphan := id.New(id.Sandbox)
	q := db.New(pool)
	var hostID string
	if err := pool.QueryRow(bg, "SELECT host_id FROM sandboxes WHERE id = $1", during).Scan(&hostID); err != nil {
		t.Fatal(err)
	}
	inserted, err := q.InsertSandbox(bg, db.InsertSandboxParams{ID: orphan, TeamID: teamID, HostID: hostID, Template: "minimal", Vcpus: 1, MemoryMb: 512, TimeoutSec: 60})
	if err != nil {
		t.Fatal(err)
	}
	if err := events.NewRedisPublisher(rdb).Publish(bg, events.Event{
		SandboxID: orphan, TeamID: teamID, HostID: hostID, From: lifecycle.Starting, To: lifecycle.Running, Generation: inserted.Generation, Actor: "worker", Time: time.Now(),
		Running: &events.RunningInfo{HostIP: "10.3.0.1", GuestIP: "10.3.0.2", EnvdVersion: "e", DiskMB: 1, StartedAt: time.Now()},
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the consumer to converge an event published after Redis returned", func() bool { return status(orphan) == "running" })
	// And the API's own events flow again.
	if code, b := call("POST", "/v1/sandboxes/"+during+"/pause", ""); code != 202 {
		t.Fatalf("pause after Redis returned: %d %s", code, b)
	}
	waitFor(t, "the pause to be published", func() bool {
		msgs, err := rdb.XRange(bg, events.Stream, "-", "+").Result()
		if err != nil {
			return false
		}
		for _, m := range msgs {
			if e, err := events.Decode(m.Values); err == nil && e.SandboxID == during && e.To == lifecycle.Paused {
				return true
			}
		}
		return false
	})
	waitFor(t, "every event to be acknowledged", func() bool {
		p, err := rdb.XPending(bg, events.Stream, events.DefaultGroup).Result()
		return err == nil && p.Count == 0
	})
}

func itoa(n int) string { return strconv.Itoa(n) }

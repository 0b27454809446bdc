package localsvc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

func needPostgres(t *testing.T) {
	t.Helper()
	if _, err := PostgresBinDir(); err != nil {
		t.Skipf("skipping: %v", err)
	}
}

func needRedis(t *testing.T) {
	t.Helper()
	if _, err := RedisBinary(); err != nil {
		t.Skipf("skipping: %v", err)
	}
}

// alive reports whether pid names a live (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] != "Z"
}

// groupMembers lists live processes in process group pgid.
func groupMembers(t *testing.T, pgid int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) > 2 && f[2] == strconv.Itoa(pgid) && f[0] != "Z" {
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestPostgresStartReuseStop(t *testing.T) {
	needPostgres(t)
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "pg")
	pg, err := StartPostgres(ctx, PostgresOptions{Dir: dir, User: "alice", Password: "p'w d", Database: "app", Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	pid := pg.proc.cmd.Process.Pid
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = pg.Stop(ctx)
		}
	})
	conn, err := pgx.Connect(ctx, pg.DSN)
	if err != nil {
		t.Fatalf("connect with DSN: %v", err)
	}
	var user, db string
	if err := conn.QueryRow(ctx, "SELECT current_user, current_database()").Scan(&user, &db); err != nil {
		t.Fatal(err)
	}
	if user != "alice" || db != "app" {
		t.Errorf("connected as %s to %s, want alice to app", user, db)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	// A wrong password is refused: authentication is really on.
	bad := strings.Replace(pg.DSN, "p%27w%20d", "nope", 1)
	if bad == pg.DSN {
		t.Fatalf("test bug: password not found in %s", pg.DSN)
	}
	if c, err := pgx.Connect(ctx, bad); err == nil {
		c.Close(ctx)
		t.Error("connect with a wrong password succeeded")
	}
	// No unix socket in the data directory.
	if m, _ := filepath.Glob(filepath.Join(dir, "data", ".s.PGSQL.*")); len(m) > 0 {
		t.Errorf("unix socket present: %v", m)
	}

	if err := pg.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	stopped = true
	if alive(pid) || len(groupMembers(t, pid)) > 0 {
		t.Fatalf("postgres group %d still alive after Stop", pid)
	}

	// A second start reuses the cluster and its data.
	pg2, err := StartPostgres(ctx, PostgresOptions{Dir: dir, User: "alice", Password: "p'w d", Database: "app", Fast: true})
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	defer pg2.Stop(ctx)
	conn, err = pgx.Connect(ctx, pg2.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v int
	if err := conn.QueryRow(ctx, "SELECT v FROM kept").Scan(&v); err != nil || v != 42 {
		t.Fatalf("data after restart: %d, %v", v, err)
	}

	dsn, err := pg2.CreateDatabase(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to created database: %v", err)
	}
	c2.Close(ctx)
	if err := pg2.DropDatabase(ctx, "other"); err != nil {
		t.Fatal(err)
	}
}

func TestRedisPasswordPersistStop(t *testing.T) {
	needRedis(t)
	ctx := context.Background()
	dir := t.TempDir()
	r, err := StartRedis(ctx, RedisOptions{Dir: dir, Password: "s3cret", Persist: true})
	if err != nil {
		t.Fatal(err)
	}
	pid := r.proc.cmd.Process.Pid
	opts, err := redis.ParseURL(r.URL)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	noAuth := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", r.Port)})
	if err := noAuth.Set(ctx, "k", "x", 0).Err(); err == nil {
		t.Error("write without the password succeeded")
	}
	noAuth.Close()
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Fatal("redis alive after Stop")
	}
	r2, err := StartRedis(ctx, RedisOptions{Dir: dir, Password: "s3cret", Persist: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Stop(ctx)
	opts, _ = redis.ParseURL(r2.URL)
	c = redis.NewClient(opts)
	defer c.Close()
	if v, err := c.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("after restart with Persist: %q, %v", v, err)
	}
}

func TestRedisSecondOnSamePortFails(t *testing.T) {
	needRedis(t)
	ctx := context.Background()
	r, err := StartRedis(ctx, RedisOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop(ctx)
	// An explicit port in use is an error that quotes the server, not a retry.
	_, err = StartRedis(ctx, RedisOptions{Dir: t.TempDir(), Port: r.Port})
	if !errors.Is(err, errExited) {
		t.Fatalf("second redis on port %d: %v, want errExited", r.Port, err)
	}
	if !strings.Contains(err.Error(), "server output") {
		t.Errorf("error does not quote the server output: %v", err)
	}
}

// TestServersDieWithParent starts a helper process that starts Redis and
// Postgres and prints their pids, kills the helper with SIGKILL (no cleanup
// code runs) and checks that both servers go away by themselves.
func TestServersDieWithParent(t *testing.T) {
	needRedis(t)
	needPostgres(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "--", "helper", t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(out)
	var pids []int
	for len(pids) < 2 && sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "pid "); ok {
			n, _ := strconv.Atoi(p)
			pids = append(pids, n)
		}
	}
	if len(pids) != 2 {
		t.Fatalf("helper printed %d pids", len(pids))
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	deadline := time.Now().Add(15 * time.Second)
	for _, pid := range pids {
		for alive(pid) || len(groupMembers(t, pid)) > 0 {
			if time.Now().After(deadline) {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				t.Fatalf("server group %d outlived its parent", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func TestHelperProcess(t *testing.T) {
	args := os.Args
	for len(args) > 0 && args[0] != "--" {
		args = args[1:]
	}
	if len(args) != 3 || args[1] != "helper" {
		t.Skip("helper process for TestServersDieWithParent")
	}
	ctx := context.Background()
	r, err := StartRedis(ctx, RedisOptions{Dir: filepath.Join(args[2], "redis")})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("pid %d\n", r.proc.cmd.Process.Pid)
	pg, err := StartPostgres(ctx, PostgresOptions{Dir: filepath.Join(args[2], "pg"), Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("pid %d\n", pg.proc.cmd.Process.Pid)
	// Allocate threads and churn goroutines: the servers must survive until
	// this process dies, whichever threads come and go.
	for {
		done := make(chan struct{})
		go func() { time.Sleep(time.Millisecond); close(done) }()
		<-done
	}
}

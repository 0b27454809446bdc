// Package testenv gives tests real Postgres and Redis servers, started from
// the Debian binaries by internal/localsvc on free loopback ports in throwaway
// directories.
//
// Postgres is one server per test binary (initdb costs about a second) with a
// fresh database per test; Redis, which starts in milliseconds, is one server
// per test. When the binaries are missing the test is skipped with a message
// naming the package to install, except under CI=true, where it fails:
// CI must not silently skip storage tests.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/wrenn/wrenn/db/migrations"
	"github.com/wrenn/wrenn/internal/localsvc"
	"github.com/wrenn/wrenn/pkg/id"
)

// InCI reports whether the tests run in CI (CI=true), where missing
// dependencies fail tests instead of skipping them.
func InCI() bool { return Getenv("CI") == "true" }

// Getenv reads a test setting from the environment (such as CI or the path
// of a prebuilt image). It is test-only and the one place outside pkg/config
// that reads the environment, so every test knob is greppable here.
func Getenv(key string) string { return os.Getenv(key) }

// unavailable skips or, in CI, fails t because a dependency is missing.
func unavailable(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, localsvc.ErrNotInstalled) && !InCI() {
		t.Skipf("skipping: needs %v", err)
	}
	t.Fatalf("test dependency: %v", err)
}

var shared struct {
	once sync.Once
	pg   *localsvc.Postgres
	dir  string
	err  error
	n    atomic.Int64
}

const dirPrefix = "wrenn-testenv-"

// Postgres returns the DSN of a new, empty database on this test binary's
// shared Postgres server. The database is dropped when the test ends; the
// server stops when Main's m.Run returns or, without Main, when the test
// binary exits (it gets a parent-death signal).
func Postgres(t testing.TB) string {
	t.Helper()
	if _, err := localsvc.PostgresBinDir(); err != nil {
		unavailable(t, err)
	}
	shared.once.Do(startShared)
	if shared.err != nil {
		t.Fatalf("start shared test postgres: %v", shared.err)
	}
	name := "t" + strconv.FormatInt(shared.n.Add(1), 10) + "_" + strings.ReplaceAll(id.Secret(4), "-", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn, err := shared.pg.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := shared.pg.DropDatabase(ctx, name); err != nil {
			t.Errorf("drop test database: %v", err)
		}
	})
	return dsn
}

func startShared() {
	reapStale()
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		shared.err = fmt.Errorf("create postgres directory: %w", err)
		return
	}
	shared.dir = dir
	// The owner's pid lets a later run remove directories of test binaries
	// that were killed before they could clean up.
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		shared.err = fmt.Errorf("write owner pid: %w", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	shared.pg, shared.err = localsvc.StartPostgres(ctx, localsvc.PostgresOptions{
		Dir:  filepath.Join(dir, "pg"),
		User: "wrenn",
		Fast: true,
	})
}

// reapStale removes the directories of earlier test binaries that are gone.
// Their servers died with them (parent-death signal); only files remain.
func reapStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "owner.pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); err == nil {
			continue
		}
		_ = os.RemoveAll(d)
	}
}

// Main runs the tests and then stops the shared Postgres server and removes
// its directory. Packages call it from TestMain; without it the server still
// stops when the binary exits, and its directory is removed by a later run.
func Main(m *testing.M) int {
	code := m.Run()
	if shared.pg != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := shared.pg.Stop(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: stop shared postgres: %v\n", err)
		}
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
	return code
}

// Redis starts a Redis server for this test alone, without persistence or
// password, stopped when the test ends, and returns its URL.
func Redis(t testing.TB) string {
	t.Helper()
	if _, err := localsvc.RedisBinary(); err != nil {
		unavailable(t, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := localsvc.StartRedis(ctx, localsvc.RedisOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("start test redis: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := r.Stop(ctx); err != nil {
			t.Errorf("stop test redis: %v", err)
		}
	})
	return r.URL
}

// MigratedPostgres returns a pool on a fresh database of the shared server
// with every migration applied; it closes with the test.
func MigratedPostgres(t testing.TB) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 60
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	sqlDB := stdlib.OpenDBFromPool(pool)
	defer sqlDB.Close()
	if _, err := migrations.Apply(ctx, sqlDB); err != nil {
		t.Fatal(err)
	}
	return pool
}

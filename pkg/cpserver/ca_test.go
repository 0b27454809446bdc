package cpserver

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/wrenn/wrenn/internal/pki"
	"github.com/wrenn/wrenn/internal/testenv"
	"github.com/wrenn/wrenn/pkg/config"
)

// TestLoadCAGeneratesOnce: replicas starting together on an empty
// database end up with one and the same CA, kept across restarts.
func TestLoadCAGeneratesOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	log := slog.New(slog.DiscardHandler)
	if err := Migrate(ctx, pool, log); err != nil {
		t.Fatal(err)
	}
	cas := make([]*pki.CA, 4)
	errs := make([]error, len(cas))
	var wg sync.WaitGroup
	for i := range cas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cas[i], errs[i] = LoadCA(ctx, pool, config.ControlPlane{}, time.Now(), log)
		}()
	}
	wg.Wait()
	for i := range cas {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		if !cas[i].Cert.Equal(cas[0].Cert) {
			t.Fatalf("replica %d got a different CA", i)
		}
	}
	again, err := LoadCA(ctx, pool, config.ControlPlane{}, time.Now(), log)
	if err != nil || !again.Cert.Equal(cas[0].Cert) {
		t.Fatalf("restart: %v", err)
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM pki_ca").Scan(&n); err != nil || n != 1 {
		t.Fatalf("stored CAs: %d %v", n, err)
	}
}

func TestLoadCAConfigured(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, keyPEM, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certPath, keyPath := write("ca.pem", ca.CertPEM), write("ca.key", keyPEM)
	otherKeyPath := write("other.key", otherKey)
	log := slog.New(slog.DiscardHandler)
	// No database is touched when the CA is configured.
	got, err := LoadCA(context.Background(), nil, config.ControlPlane{CACertFile: certPath, CAKeyFile: keyPath}, time.Now(), log)
	if err != nil || !got.Cert.Equal(ca.Cert) {
		t.Fatalf("configured CA: %v", err)
	}
	for _, tc := range []struct {
		name      string
		cert, key string
	}{
		{"missing cert", filepath.Join(dir, "nope.pem"), keyPath},
		{"missing key", certPath, filepath.Join(dir, "nope.key")},
		{"key of another CA", certPath, otherKeyPath},
	} {
		if _, err := LoadCA(context.Background(), nil, config.ControlPlane{CACertFile: tc.cert, CAKeyFile: tc.key}, time.Now(), log); err == nil {
			t.Errorf("%s: loaded", tc.name)
		}
	}
}

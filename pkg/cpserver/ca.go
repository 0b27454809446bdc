package cpserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/wrenn/wrenn/internal/pki"
	"github.com/wrenn/wrenn/pkg/config"
	"github.com/wrenn/wrenn/pkg/db"
)

// LoadCA returns the CA that signs agents' certificates: the configured one
// (WRENN_CA_CERT/WRENN_CA_KEY), or else the one stored in Postgres,
// generating and storing it on the very first start. Postgres is where
// every replica finds the same CA without shared files; concurrent first
// starts generate once (an advisory lock serialises them).
//
// The generated key is stored in Postgres unencrypted: whoever can write
// that database can already repoint hosts and sandboxes, so encrypting it
// with a key that every replica must share as well would add a secret to
// distribute without protecting against anyone. Deployments that want the
// key elsewhere configure WRENN_CA_CERT/WRENN_CA_KEY (files kept 0600).
func LoadCA(ctx context.Context, pool *pgxpool.Pool, cfg config.ControlPlane, now time.Time, log *slog.Logger) (*pki.CA, error) {
	if cfg.CACertFile != "" {
		certPEM, err := os.ReadFile(cfg.CACertFile)
		if err != nil {
			return nil, fmt.Errorf("read WRENN_CA_CERT: %w", err)
		}
		keyPEM, err := os.ReadFile(cfg.CAKeyFile)
		if err != nil {
			return nil, fmt.Errorf("read WRENN_CA_KEY: %w", err)
		}
		ca, err := pki.ParseCA(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("load the configured CA (WRENN_CA_CERT, WRENN_CA_KEY): %w", err)
		}
		return ca, nil
	}
	var ca *pki.CA
	err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('wrenn:ca'))"); err != nil {
			return fmt.Errorf("take CA lock: %w", err)
		}
		q := db.New(tx)
		row, err := q.GetCA(ctx)
		if err == nil {
			ca, err = pki.ParseCA([]byte(row.CertPem), []byte(row.KeyPem))
			if err != nil {
				return fmt.Errorf("load the stored CA: %w", err)
			}
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("read the stored CA: %w", err)
		}
		var keyPEM []byte
		if ca, keyPEM, err = pki.NewCA(now); err != nil {
			return err
		}
		if err := q.InsertCA(ctx, db.InsertCAParams{CertPem: string(ca.CertPEM), KeyPem: string(keyPEM)}); err != nil {
			return fmt.Errorf("store the generated CA: %w", err)
		}
		log.Info("generated the internal CA for agent mTLS", "expires", ca.Cert.NotAfter)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ca, nil
}

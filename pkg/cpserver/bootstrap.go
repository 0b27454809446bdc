package cpserver

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/wrenn/wrenn/internal/api"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/id"
)

// Bootstrap makes a fresh stack usable without a signup step: when key is
// set and the database has no user, it creates, in one transaction, an admin
// user with email, a team "default", the user's owner membership and the API
// key (stored hashed). It is idempotent: when the key exists it does nothing;
// when users exist but the key does not, it logs a warning and does nothing,
// because a populated database is never given a new admin behind its back.
func Bootstrap(ctx context.Context, pool *pgxpool.Pool, key, email string, log *slog.Logger) error {
	if key == "" {
		return nil
	}
	return pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		q := db.New(tx)
		// Concurrent replicas starting together bootstrap once: the lock
		// serialises them, and under read committed each later statement
		// sees what the first one committed, so the second finds the key.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('wrenn:bootstrap'))"); err != nil {
			return fmt.Errorf("bootstrap: take lock: %w", err)
		}
		hash := api.HashSecret(key)
		exists, err := q.APIKeyHashExists(ctx, hash)
		if err != nil {
			return fmt.Errorf("bootstrap: look up key: %w", err)
		}
		if exists {
			return nil
		}
		users, err := q.CountUsers(ctx)
		if err != nil {
			return fmt.Errorf("bootstrap: count users: %w", err)
		}
		if users > 0 {
			log.Warn("WRENN_BOOTSTRAP_API_KEY is set but the database already has users and not this key; ignoring it")
			return nil
		}
		teamID, userID, keyID := id.New(id.Team), id.New(id.User), id.New(id.APIKey)
		if err := q.CreateTeam(ctx, db.CreateTeamParams{ID: teamID, Name: "default"}); err != nil {
			return fmt.Errorf("bootstrap: create team: %w", err)
		}
		if err := q.CreateUser(ctx, db.CreateUserParams{ID: userID, Email: email, IsAdmin: true}); err != nil {
			return fmt.Errorf("bootstrap: create admin user: %w", err)
		}
		if err := q.AddTeamMember(ctx, db.AddTeamMemberParams{TeamID: teamID, UserID: userID, Role: "owner"}); err != nil {
			return fmt.Errorf("bootstrap: add membership: %w", err)
		}
		if err := q.CreateAPIKey(ctx, db.CreateAPIKeyParams{
			ID: keyID, TeamID: teamID, UserID: userID, Name: "bootstrap", KeyHash: hash, KeyPrefix: KeyPrefix(key),
		}); err != nil {
			return fmt.Errorf("bootstrap: store API key: %w", err)
		}
		log.Info("bootstrapped admin user, team and API key", "team_id", teamID, "email", email, "key", KeyPrefix(key))
		return nil
	})
}

// KeyPrefix is the displayable start of an API key (wrn_ab12…), enough to
// tell keys apart and useless to an attacker.
func KeyPrefix(key string) string {
	if len(key) <= 8 {
		return key
	}
	return key[:8] + "…"
}

package audit_test

import (
	"context"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/wrenn/wrenn/internal/testenv"
	"github.com/wrenn/wrenn/pkg/audit"
	"github.com/wrenn/wrenn/pkg/db"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func setup(t *testing.T) (*pgxpool.Pool, *db.Queries) {
	t.Helper()
	ctx := context.Background()
	pool := testenv.MigratedPostgres(t)
	q := db.New(pool)
	for _, team := range []string{"team-a", "team-b"} {
		if err := q.CreateTeam(ctx, db.CreateTeamParams{ID: team, Name: team}); err != nil {
			t.Fatal(err)
		}
	}
	return pool, q
}

func TestRecordAndList(t *testing.T) {
	t.Parallel()
	_, q := setup(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for i, e := range []audit.Entry{
		{TeamID: "team-a", Action: "ext.thing.create", ResourceType: "thing", ResourceID: "t1", Status: http.StatusCreated, CreatedAt: at},
		{TeamID: "team-b", Action: "ext.thing.create", ResourceType: "thing", ResourceID: "t2"},
		{TeamID: "team-a", Action: "ext.thing.delete", ResourceType: "thing", ResourceID: "t1", Status: http.StatusForbidden, CreatedAt: at.Add(time.Second)},
		{TeamID: "team-a", ActorKeyID: "key-1", Action: "ext.thing.delete", ResourceType: "thing", ResourceID: "t3", Status: http.StatusConflict, CreatedAt: at.Add(2 * time.Second)},
	} {
		if err := audit.Record(ctx, q, e); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	got, err := audit.List(ctx, q, "team-a", 0, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ResourceID != "t3" || got[0].Outcome != audit.Failure || got[0].ActorKeyID != "key-1" ||
		got[1].ResourceID != "t1" || got[1].Outcome != audit.Denied || got[1].Status != http.StatusForbidden {
		t.Fatalf("first page %+v", got)
	}
	rest, err := audit.List(ctx, q, "team-a", got[1].ID, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != 1 || rest[0].Action != "ext.thing.create" || rest[0].Outcome != audit.Success || !rest[0].CreatedAt.Equal(at) {
		t.Fatalf("second page %+v", rest)
	}
	// Team B sees its own entry only; its defaults were filled in.
	b, err := audit.List(ctx, q, "team-b", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 1 || b[0].ResourceID != "t2" || b[0].Status != http.StatusOK || b[0].Outcome != audit.Success || b[0].CreatedAt.IsZero() {
		t.Fatalf("team b %+v", b)
	}
}

func TestRecordInTransaction(t *testing.T) {
	t.Parallel()
	pool, q := setup(t)
	ctx := context.Background()
	// An entry written in a transaction that rolls back is gone with it.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := audit.Record(ctx, q.WithTx(tx), audit.Entry{TeamID: "team-a", Action: "ext.rolled_back"}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return audit.Record(ctx, q.WithTx(tx), audit.Entry{TeamID: "team-a", Action: "ext.committed"})
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := audit.List(ctx, q, "team-a", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Action != "ext.committed" {
		t.Fatalf("entries %+v", got)
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	_, q := setup(t)
	ctx := context.Background()
	if err := audit.Record(ctx, q, audit.Entry{TeamID: "team-a"}); err == nil {
		t.Error("an entry without an action was recorded")
	}
	for _, limit := range []int{0, -1, audit.MaxPage + 1} {
		if _, err := audit.List(ctx, q, "team-a", 0, limit); err == nil {
			t.Errorf("limit %d accepted", limit)
		}
	}
	if got, err := audit.List(ctx, q, "team-a", 0, 10); err != nil || len(got) != 0 {
		t.Errorf("after refused input: %+v, %v", got, err)
	}
}

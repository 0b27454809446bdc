package db_test

import (
	"context"
	"errors"
	"os"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/wrenn/wrenn/internal/testenv"
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
	if _, err := q.CreateHost(ctx, db.CreateHostParams{ID: "host-1", Name: "h1"}); err != nil {
		t.Fatal(err)
	}
	return pool, q
}

func newSandbox(t *testing.T, q *db.Queries, id string) db.Sandbox {
	t.Helper()
	sb, err := q.InsertSandbox(context.Background(), db.InsertSandboxParams{
		ID: id, TeamID: "team-a", HostID: "host-1", Template: "minimal", Vcpus: 1, MemoryMb: 512, TimeoutSec: 300,
	})
	if err != nil {
		t.Fatal(err)
	}
	if sb.Status != "starting" {
		t.Fatalf("new sandbox is %s", sb.Status)
	}
	return sb
}

func get(t *testing.T, q *db.Queries, id string) db.Sandbox {
	t.Helper()
	sb, err := q.GetSandbox(context.Background(), db.GetSandboxParams{ID: id, TeamID: "team-a"})
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

// Each compare-and-set query, raced by 50 writers from the same expected
// status: exactly one wins, the others get ErrNoRows, and the row is the
// winner's.
func TestCASExactlyOneWinner(t *testing.T) {
	t.Parallel()
	_, q := setup(t)
	ctx := context.Background()
	started := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	stopped := started.Add(time.Hour)
	kinds := map[string]func(sb db.Sandbox, i int) (db.Sandbox, error){
		"status": func(sb db.Sandbox, i int) (db.Sandbox, error) {
			return q.UpdateSandboxStatusIf(ctx, db.UpdateSandboxStatusIfParams{ID: sb.ID, TeamID: "team-a", Expected: "starting", Generation: sb.Generation, Status: "stopping"})
		},
		"running": func(sb db.Sandbox, i int) (db.Sandbox, error) {
			return q.UpdateSandboxRunningIf(ctx, db.UpdateSandboxRunningIfParams{ID: sb.ID, TeamID: "team-a", Expected: "starting", Generation: sb.Generation,
				HostIp: "10.0.0.1", GuestIp: "10.0.0.2", EnvdVersion: "v1", DiskMb: int64(i), StartedAt: &started})
		},
		"error": func(sb db.Sandbox, i int) (db.Sandbox, error) {
			return q.UpdateSandboxErrorIf(ctx, db.UpdateSandboxErrorIfParams{ID: sb.ID, TeamID: "team-a", Expected: "starting", Generation: sb.Generation, Error: "e"})
		},
		"stopped": func(sb db.Sandbox, i int) (db.Sandbox, error) {
			return q.UpdateSandboxStoppedIf(ctx, db.UpdateSandboxStoppedIfParams{ID: sb.ID, TeamID: "team-a", Expected: "starting", Generation: sb.Generation, StoppedAt: &stopped})
		},
		"missing": func(sb db.Sandbox, i int) (db.Sandbox, error) {
			return q.UpdateSandboxMissingIf(ctx, db.UpdateSandboxMissingIfParams{ID: sb.ID, TeamID: "team-a", Expected: "starting", Generation: sb.Generation})
		},
	}
	for name, cas := range kinds {
		t.Run(name, func(t *testing.T) {
			sid := "sb-" + name
			inserted := newSandbox(t, q, sid)
			var (
				wg      sync.WaitGroup
				mu      sync.Mutex
				winners []db.Sandbox
				other   []error
			)
			for i := range 50 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					sb, err := cas(inserted, i)
					mu.Lock()
					defer mu.Unlock()
					switch {
					case err == nil:
						winners = append(winners, sb)
					case !errors.Is(err, pgx.ErrNoRows):
						other = append(other, err)
					}
				}()
			}
			wg.Wait()
			if len(other) > 0 {
				t.Fatalf("unexpected errors: %v", other)
			}
			if len(winners) != 1 {
				t.Fatalf("%d winners, want exactly 1", len(winners))
			}
			final := get(t, q, sid)
			if final.Status != winners[0].Status || final.DiskMb != winners[0].DiskMb || !final.UpdatedAt.Equal(winners[0].UpdatedAt) {
				t.Errorf("row %+v is not the winner's %+v", final, winners[0])
			}
			if final.Generation != inserted.Generation+1 {
				t.Errorf("generation %d after one transition from %d", final.Generation, inserted.Generation)
			}
		})
	}
}

// Writers racing toward different statuses from the same one: one wins, and
// a loser changes nothing, not even fields its status would have set.
func TestCASLoserChangesNothing(t *testing.T) {
	t.Parallel()
	_, q := setup(t)
	ctx := context.Background()
	gen := newSandbox(t, q, "sb-mixed").Generation
	now := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := map[string]int{}
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			var who string
			switch i % 3 {
			case 0:
				who = "running"
				_, err = q.UpdateSandboxRunningIf(ctx, db.UpdateSandboxRunningIfParams{ID: "sb-mixed", TeamID: "team-a", Expected: "starting", Generation: gen, HostIp: "h", GuestIp: "g", StartedAt: &now})
			case 1:
				who = "error"
				_, err = q.UpdateSandboxErrorIf(ctx, db.UpdateSandboxErrorIfParams{ID: "sb-mixed", TeamID: "team-a", Expected: "starting", Generation: gen, Error: "boom"})
			case 2:
				who = "stopping"
				_, err = q.UpdateSandboxStatusIf(ctx, db.UpdateSandboxStatusIfParams{ID: "sb-mixed", TeamID: "team-a", Expected: "starting", Generation: gen, Status: "stopping"})
			}
			if err == nil {
				mu.Lock()
				wins[who]++
				mu.Unlock()
			} else if !errors.Is(err, pgx.ErrNoRows) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if len(wins) != 1 {
		t.Fatalf("winners %v, want exactly one", wins)
	}
	sb := get(t, q, "sb-mixed")
	for who, n := range wins {
		if n != 1 || sb.Status != who {
			t.Fatalf("winner %s x%d, row status %s", who, n, sb.Status)
		}
	}
	if (sb.Status == "running") != (sb.HostIp == "h" && sb.StartedAt != nil) {
		t.Errorf("running fields half-applied: %+v", sb)
	}
	if (sb.Status == "error") != (sb.Error == "boom") {
		t.Errorf("error field half-applied: %+v", sb)
	}
}

// A round trip back to the same status (starting → … → running → pausing →
// paused → resuming → running) leaves the status equal and the generation
// moved on: a writer holding the older generation changes nothing, the one
// holding the current generation wins, once.
func TestCASGenerationOutlivesRoundTrip(t *testing.T) {
	t.Parallel()
	_, q := setup(t)
	ctx := context.Background()
	sb := newSandbox(t, q, "sb-aba")
	now := time.Now()
	sb, err := q.UpdateSandboxRunningIf(ctx, db.UpdateSandboxRunningIfParams{ID: sb.ID, TeamID: "team-a", Expected: "starting", Generation: sb.Generation, StartedAt: &now})
	if err != nil {
		t.Fatal(err)
	}
	old := sb
	for _, to := range []string{"pausing", "paused", "resuming", "running"} {
		next, err := q.UpdateSandboxStatusIf(ctx, db.UpdateSandboxStatusIfParams{ID: sb.ID, TeamID: "team-a", Expected: sb.Status, Generation: sb.Generation, Status: to})
		if err != nil {
			t.Fatalf("%s -> %s: %v", sb.Status, to, err)
		}
		if next.Generation != sb.Generation+1 {
			t.Fatalf("%s -> %s: generation %d -> %d", sb.Status, to, sb.Generation, next.Generation)
		}
		sb = next
	}
	if sb.Status != old.Status {
		t.Fatalf("round trip ended %s", sb.Status)
	}
	stale := db.UpdateSandboxStatusIfParams{ID: sb.ID, TeamID: "team-a", Expected: "running", Generation: old.Generation, Status: "pausing"}
	if _, err := q.UpdateSandboxStatusIf(ctx, stale); !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("CAS at the generation before the round trip: %v, want ErrNoRows", err)
	}
	if got := get(t, q, sb.ID); !reflect.DeepEqual(got, sb) {
		t.Fatalf("stale CAS changed the row: %+v", got)
	}
	cur := stale
	cur.Generation = sb.Generation
	if _, err := q.UpdateSandboxStatusIf(ctx, cur); err != nil {
		t.Fatalf("CAS at the current generation: %v", err)
	}
	if _, err := q.UpdateSandboxStatusIf(ctx, cur); !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("the same CAS twice: %v, want ErrNoRows", err)
	}
}

func TestCASFiltersByTeamAndStatus(t *testing.T) {
	t.Parallel()
	_, q := setup(t)
	ctx := context.Background()
	before := newSandbox(t, q, "sb-team")
	_, err := q.UpdateSandboxStatusIf(ctx, db.UpdateSandboxStatusIfParams{ID: "sb-team", TeamID: "team-b", Expected: "starting", Generation: before.Generation, Status: "stopping"})
	if !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("other team's CAS: %v, want ErrNoRows", err)
	}
	_, err = q.UpdateSandboxStatusIf(ctx, db.UpdateSandboxStatusIfParams{ID: "sb-team", TeamID: "team-a", Expected: "running", Generation: before.Generation, Status: "stopping"})
	if !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("wrong expected status: %v, want ErrNoRows", err)
	}
	if _, err := q.GetSandbox(ctx, db.GetSandboxParams{ID: "sb-team", TeamID: "team-b"}); !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("other team's get: %v", err)
	}
	if after := get(t, q, "sb-team"); !reflect.DeepEqual(after, before) {
		t.Errorf("row changed: %+v -> %+v", before, after)
	}
	list, err := q.ListSandboxes(ctx, db.ListSandboxesParams{TeamID: "team-b", Statuses: []string{}, Metadata: []byte("{}"), MaxRows: 100})
	if err != nil || len(list) != 0 {
		t.Errorf("team-b lists %d sandboxes, %v", len(list), err)
	}
}

// The status column refuses anything outside the state machine, so a bug
// cannot store a status no reader understands.
func TestStatusCheckConstraint(t *testing.T) {
	t.Parallel()
	_, q := setup(t)
	sb := newSandbox(t, q, "sb-check")
	_, err := q.UpdateSandboxStatusIf(context.Background(), db.UpdateSandboxStatusIfParams{ID: "sb-check", TeamID: "team-a", Expected: "starting", Generation: sb.Generation, Status: "flying"})
	if err == nil || errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("unknown status stored: %v", err)
	}
}

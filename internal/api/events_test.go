package api

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// The fallback writer applies an outcome once, at the generation it names;
// replays, stale events and events without a generation change nothing and
// are acknowledged.
func TestApplyEventIdempotent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	teamID, _ := e.team(false)
	hostID := e.host("h1")
	ctx := context.Background()
	sid := id.New(id.Sandbox)
	inserted, err := e.q.InsertSandbox(ctx, db.InsertSandboxParams{ID: sid, TeamID: teamID, HostID: hostID, Template: "minimal", Vcpus: 1, MemoryMb: 512, TimeoutSec: 300})
	must(t, err)
	started := time.Unix(1700000000, 0).UTC()
	run := events.Event{SandboxID: sid, TeamID: teamID, HostID: hostID, From: lifecycle.Starting, To: lifecycle.Running, Generation: inserted.Generation, Actor: "worker", Time: time.Now(),
		Running: &events.RunningInfo{HostIP: "10.1.0.1", GuestIP: "10.1.0.2", EnvdVersion: "v9", DiskMB: 777, StartedAt: started}}
	// As published before events carried generations: the status matches,
	// but nothing tells it from a stale event, so it is not applied.
	legacy := run
	legacy.Generation = 0
	must(t, e.api.ApplyEvent(ctx, legacy))
	if got, err := e.q.GetSandbox(ctx, db.GetSandboxParams{ID: sid, TeamID: teamID}); err != nil || !reflect.DeepEqual(got, inserted) {
		t.Fatalf("an event without a generation changed the row: %+v (%v)", got, err)
	}
	must(t, e.api.ApplyEvent(ctx, run))
	got, err := e.q.GetSandbox(ctx, db.GetSandboxParams{ID: sid, TeamID: teamID})
	must(t, err)
	if got.Status != "running" || got.HostIp != "10.1.0.1" || got.EnvdVersion != "v9" || got.DiskMb != 777 || got.StartedAt == nil || !got.StartedAt.Equal(started) || got.Generation != inserted.Generation+1 {
		t.Fatalf("after apply %+v", got)
	}
	g := got.Generation
	for name, stale := range map[string]events.Event{
		"replay":            run,
		"stale failure":     {SandboxID: sid, TeamID: teamID, From: lifecycle.Starting, To: lifecycle.Error, Generation: inserted.Generation, Error: "late", Time: time.Now()},
		"older generation":  {SandboxID: sid, TeamID: teamID, From: lifecycle.Running, To: lifecycle.Stopping, Generation: g - 1, Time: time.Now()},
		"future generation": {SandboxID: sid, TeamID: teamID, From: lifecycle.Running, To: lifecycle.Stopping, Generation: g + 1, Time: time.Now()},
		"no generation":     {SandboxID: sid, TeamID: teamID, From: lifecycle.Running, To: lifecycle.Stopping, Time: time.Now()},
		"other team":        {SandboxID: sid, TeamID: "team-other", From: lifecycle.Running, To: lifecycle.Stopping, Generation: g, Time: time.Now()},
		"refused by FSM":    {SandboxID: sid, TeamID: teamID, From: lifecycle.Stopped, To: lifecycle.Running, Generation: g, Time: time.Now()},
		"unknown sandbox":   {SandboxID: "sb-none", TeamID: teamID, From: lifecycle.Running, To: lifecycle.Stopping, Generation: g, Time: time.Now()},
	} {
		if err := e.api.ApplyEvent(ctx, stale); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		after, err := e.q.GetSandbox(ctx, db.GetSandboxParams{ID: sid, TeamID: teamID})
		must(t, err)
		if !reflect.DeepEqual(after, got) {
			t.Errorf("%s changed the row: %+v", name, after)
		}
	}
	stopAt := time.Unix(1800000000, 0).UTC()
	must(t, e.api.ApplyEvent(ctx, events.Event{SandboxID: sid, TeamID: teamID, From: lifecycle.Running, To: lifecycle.Stopping, Generation: g, Time: time.Now()}))
	must(t, e.api.ApplyEvent(ctx, events.Event{SandboxID: sid, TeamID: teamID, From: lifecycle.Stopping, To: lifecycle.Stopped, Generation: g + 1, Time: stopAt}))
	got, err = e.q.GetSandbox(ctx, db.GetSandboxParams{ID: sid, TeamID: teamID})
	must(t, err)
	if got.Status != "stopped" || got.StoppedAt == nil || !got.StoppedAt.Equal(stopAt) {
		t.Errorf("after stop events %+v", got)
	}
}

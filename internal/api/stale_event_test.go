package api

import (
	"context"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// TestStaleEventAfterABA: the event consumer applies an outcome with a
// compare-and-set on the status alone, so an outcome of an earlier pause
// (pausing → paused), consumed late, lands on a later pause that is still
// running, and that later pause's failure (back to running) then loses its
// CAS: the database says paused while the host runs the sandbox. Found by
// TestConsumerLagUnderRaces (internal/monitor) once the race workload runs
// with the consumer.
func TestStaleEventAfterABA(t *testing.T) {
	t.Skip("known bug: events do not carry the row version of the transition they end, so ApplyEvent cannot tell a stale outcome from a current one; fix by publishing the transient row's updated_at and applying with ApplyTransitionSeen")
	t.Parallel()
	e := newEnv(t)
	teamID, key := e.team(false)
	hostID := e.host("h1")
	sid := e.create(key)
	e.waitStatus(key, sid, "running")
	ctx := context.Background()
	// Pause 1 succeeds and is recorded by its writer; its event is still
	// in the stream.
	if r := e.do("POST", "/v1/sandboxes/"+sid+"/pause", key, nil); r.status != 202 {
		t.Fatalf("pause: %d", r.status)
	}
	e.waitStatus(key, sid, "paused")
	stale := events.Event{SandboxID: sid, TeamID: teamID, HostID: hostID, From: lifecycle.Pausing, To: lifecycle.Paused, Actor: "worker", Time: time.Now()}
	if r := e.do("POST", "/v1/sandboxes/"+sid+"/resume", key, nil); r.status != 202 {
		t.Fatalf("resume: %d", r.status)
	}
	e.waitStatus(key, sid, "running")
	// Pause 2 is in flight and will fail on the host.
	release := make(chan struct{})
	e.fake.OnPause = func(context.Context, string) error {
		<-release
		return &hostclient.Error{Op: "pause sandbox", Class: hostclient.ErrConflict}
	}
	if r := e.do("POST", "/v1/sandboxes/"+sid+"/pause", key, nil); r.status != 202 {
		t.Fatalf("second pause: %d", r.status)
	}
	must(t, e.api.ApplyEvent(ctx, stale))
	close(release)
	got := e.waitStatus(key, sid, "running")
	if st, _ := e.fake.State(sid); got.Status != "running" || st != hostclient.StateRunning {
		t.Errorf("database %s, host %s", got.Status, st)
	}
}

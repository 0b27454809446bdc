package api

import (
	"context"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// published returns the events published to the test's Redis for sid, in
// stream order.
func (e *env) published(sid string) []events.Event {
	e.t.Helper()
	msgs, err := e.redis.XRange(context.Background(), events.Stream, "-", "+").Result()
	must(e.t, err)
	var out []events.Event
	for _, m := range msgs {
		ev, err := events.Decode(m.Values)
		must(e.t, err)
		if ev.SandboxID == sid {
			out = append(out, ev)
		}
	}
	return out
}

// lastPublished returns the newest published event of sid from → to.
func (e *env) lastPublished(sid string, from, to lifecycle.Status) events.Event {
	e.t.Helper()
	all := e.published(sid)
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].From == from && all[i].To == to {
			return all[i]
		}
	}
	e.t.Fatalf("no %s -> %s event published for %s in %+v", from, to, sid, all)
	return events.Event{}
}

func (e *env) sandboxRow(teamID, sid string) db.Sandbox {
	e.t.Helper()
	sb, err := e.q.GetSandbox(context.Background(), db.GetSandboxParams{ID: sid, TeamID: teamID})
	must(e.t, err)
	return sb
}

// TestStaleEventAfterABA: the outcome of an earlier pause (pausing →
// paused), consumed late, must not land on a later pause that is still
// running: the status compares equal, the generation does not. Otherwise
// that later pause's failure (back to running) loses its compare-and-set
// and the database says paused while the host runs the sandbox. Found by
// TestConsumerLagUnderRaces (internal/monitor) once the race workload ran
// with the consumer.
func TestStaleEventAfterABA(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withRedis)
	_, key := e.team(false)
	e.host("h1")
	sid := e.create(key)
	e.waitStatus(key, sid, "running")
	ctx := context.Background()
	// Pause 1 succeeds and is recorded by its writer; its event is still
	// in the stream.
	if r := e.do("POST", "/v1/sandboxes/"+sid+"/pause", key, nil); r.status != 202 {
		t.Fatalf("pause: %d", r.status)
	}
	e.waitStatus(key, sid, "paused")
	stale := e.lastPublished(sid, lifecycle.Pausing, lifecycle.Paused)
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
	if st := e.status(sid); st != "pausing" {
		t.Errorf("the stale outcome moved the in-flight pause to %s", st)
	}
	close(release)
	got := e.waitStatus(key, sid, "running")
	if st, _ := e.fake.State(sid); got.Status != "running" || st != hostclient.StateRunning {
		t.Errorf("database %s, host %s", got.Status, st)
	}
}

// Every event of a history replayed after it, in order and backwards,
// changes nothing: outcomes recorded by their writers, entry events of
// operations long over (running → pausing of the first pause must not
// leave a running sandbox pausing with nobody working on it), and an
// agent's auto-pause (running → paused must not pause the sandbox the user
// resumed since). Each of them names a status the sandbox has been in
// again since, at a later generation.
func TestOldEventsAfterNewerOperations(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withRedis)
	teamID, key := e.team(false)
	_, tok := e.hostWithToken("h1")
	sid := e.create(key)
	e.waitStatus(key, sid, "running")
	op := func(verb, want string) {
		t.Helper()
		if r := e.do("POST", "/v1/sandboxes/"+sid+"/"+verb, key, nil); r.status != 202 {
			t.Fatalf("%s: %d %s", verb, r.status, r.body)
		}
		e.waitStatus(key, sid, want)
	}
	op("pause", "paused")
	op("resume", "running")
	if !e.fake.AutoPause(sid) {
		t.Fatal("the host could not auto-pause the sandbox")
	}
	r := e.do("POST", "/v1/hosts/sandbox-events", "", map[string]any{"event_id": "evt-" + id.Secret(6), "sandbox_id": sid, "type": "auto_paused", "time": time.Now().UTC()}, "Authorization", "Bearer "+tok)
	if r.status != 200 {
		t.Fatalf("auto-pause callback: %d %s", r.status, r.body)
	}
	e.waitStatus(key, sid, "paused")
	op("resume", "running")
	op("pause", "paused")
	op("resume", "running")

	// One event for the create's outcome, two (entry and outcome) for each
	// of the five operations, one for the auto-pause: each transition
	// starts from the generation the one before it left.
	history := e.published(sid)
	if want := 1 + 5*2 + 1; len(history) != want {
		t.Errorf("%d events published, want %d: %+v", len(history), want, history)
	}
	for i, ev := range history {
		if ev.Generation != int64(i+1) {
			t.Errorf("event %d (%s -> %s) has generation %d, want %d", i, ev.From, ev.To, ev.Generation, i+1)
		}
	}
	before := e.sandboxRow(teamID, sid)
	backwards := slices.Clone(history)
	slices.Reverse(backwards)
	for _, ev := range append(history, backwards...) {
		must(t, e.api.ApplyEvent(context.Background(), ev))
		if after := e.sandboxRow(teamID, sid); !reflect.DeepEqual(after, before) {
			t.Fatalf("old event %s -> %s (generation %d, by %s) changed the row: %s at %d, was %s at %d",
				ev.From, ev.To, ev.Generation, ev.Actor, after.Status, after.Generation, before.Status, before.Generation)
		}
	}
	if st, _ := e.fake.State(sid); st != hostclient.StateRunning {
		t.Errorf("host %s", st)
	}
}

// The consumer recording an outcome before its writer (the writer is slow
// or dead) and the writer recording it after: one transition, and the
// second of the two changes nothing.
func TestConsumerBeforeWriter(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withRedis)
	teamID, key := e.team(false)
	e.host("h1")
	sid := e.create(key)
	e.waitStatus(key, sid, "running")
	entered, release := make(chan struct{}), make(chan struct{})
	e.fake.OnPause = func(context.Context, string) error {
		close(entered)
		<-release
		return nil
	}
	if r := e.do("POST", "/v1/sandboxes/"+sid+"/pause", key, nil); r.status != 202 {
		t.Fatalf("pause: %d", r.status)
	}
	<-entered
	pausing := e.sandboxRow(teamID, sid)
	if pausing.Status != "pausing" {
		t.Fatalf("sandbox %s during the pause", pausing.Status)
	}
	// What the writer will publish once the host answers.
	outcome := events.Event{SandboxID: sid, TeamID: teamID, HostID: pausing.HostID, From: lifecycle.Pausing, To: lifecycle.Paused, Generation: pausing.Generation, Actor: "worker", Time: time.Now()}
	must(t, e.api.ApplyEvent(context.Background(), outcome))
	paused := e.sandboxRow(teamID, sid)
	if paused.Status != "paused" || paused.Generation != pausing.Generation+1 {
		t.Fatalf("consumer left %s at %d, want paused at %d", paused.Status, paused.Generation, pausing.Generation+1)
	}
	close(release)
	if ev := waitEvent(t, e, sid, lifecycle.Pausing, lifecycle.Paused); ev.Generation != pausing.Generation {
		t.Errorf("writer published generation %d, want %d", ev.Generation, pausing.Generation)
	}
	must(t, e.api.Wait(context.Background()))
	if after := e.sandboxRow(teamID, sid); !reflect.DeepEqual(after, paused) {
		t.Errorf("the writer recorded the outcome again: %+v, was %+v", after, paused)
	}
}

// waitEvent waits until an event from → to was published for sid.
func waitEvent(t *testing.T, e *env, sid string, from, to lifecycle.Status) events.Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, ev := range e.published(sid) {
			if ev.From == from && ev.To == to {
				return ev
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s -> %s event for %s", from, to, sid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/envdclient"
	"github.com/wrenn/wrenn/internal/runtime"
	"github.com/wrenn/wrenn/pkg/id"
)

// eventServer is the control plane's sandbox-events endpoint: it refuses
// the first failFirst deliveries with 503 and records every body.
type eventServer struct {
	srv       *httptest.Server
	failFirst int

	mu       sync.Mutex
	attempts []Event
	accepted []Event
	auth     []string
}

func newEventServer(t *testing.T, failFirst int) *eventServer {
	es := &eventServer{failFirst: failFirst}
	es.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/hosts/sandbox-events" {
			http.NotFound(w, r)
			return
		}
		b, _ := io.ReadAll(r.Body)
		var ev Event
		if err := json.Unmarshal(b, &ev); err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		es.mu.Lock()
		defer es.mu.Unlock()
		es.attempts = append(es.attempts, ev)
		es.auth = append(es.auth, r.Header.Get("Authorization"))
		if len(es.attempts) <= es.failFirst {
			http.Error(w, "try later", http.StatusServiceUnavailable)
			return
		}
		// Idempotent by event id, as the real endpoint is.
		for _, a := range es.accepted {
			if a.EventID == ev.EventID {
				w.WriteHeader(http.StatusOK)
				return
			}
		}
		es.accepted = append(es.accepted, ev)
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(es.srv.Close)
	return es
}

func (es *eventServer) snapshot() (attempts, accepted []Event, auth []string) {
	es.mu.Lock()
	defer es.mu.Unlock()
	return slices.Clone(es.attempts), slices.Clone(es.accepted), slices.Clone(es.auth)
}

func (es *eventServer) reporter(t *testing.T) *HTTPReporter {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	rep := &HTTPReporter{URL: es.srv.URL, Client: &http.Client{Transport: tr}, FirstBackoff: time.Millisecond}
	rep.SetToken("host-token-1")
	return rep
}

// waitFor polls cond in real time; the events are delivered in the
// background with real backoff.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// tick advances the clock by d once the loop waits on it, then waits for
// the sweep that follows to finish.
func (r *rig) tick(t *testing.T, d time.Duration) {
	t.Helper()
	r.clock.waitForWaiter(t)
	r.clock.advance(d)
	r.clock.waitForWaiter(t)
}

func (r *rig) stateOf(t *testing.T, sid string) State {
	t.Helper()
	sb, err := r.m.Get(sid)
	if err != nil {
		t.Fatalf("get %s: %v", sid, err)
	}
	sb.op.Lock()
	defer sb.op.Unlock()
	return sb.State
}

func TestAutoPauseAfterInactivityReportsOnceDespiteRetries(t *testing.T) {
	t.Parallel()
	es := newEventServer(t, 2)
	r := newRig(t, es.reporter(t))
	ctx := context.Background()
	idle, never, busy := newID(), newID(), newID()
	for sid, timeout := range map[string]time.Duration{idle: 10 * time.Second, never: 0, busy: 10 * time.Second} {
		if _, err := r.m.Create(ctx, createReq(sid, timeout)); err != nil {
			t.Fatal(err)
		}
	}
	r.run(t)

	// t=6: nobody is idle for 10 s yet. Activity on busy resets its timer.
	r.tick(t, 6*time.Second)
	if got := r.stateOf(t, idle); got != StateRunning {
		t.Fatalf("paused after 6 s of a 10 s timeout: %s", got)
	}
	if err := r.m.Ping(busy); err != nil {
		t.Fatal(err)
	}
	// t=11: idle passed its timeout, busy (pinged at 6) did not.
	r.tick(t, 5*time.Second)
	if got := r.stateOf(t, idle); got != StatePaused {
		t.Fatalf("idle sandbox is %s after its timeout, want paused", got)
	}
	if got := r.stateOf(t, busy); got != StateRunning {
		t.Errorf("pinged sandbox is %s, want running", got)
	}
	if got := r.m.TakeAutoPaused(); !slices.Equal(got, []string{idle}) {
		t.Errorf("auto-paused ids %v, want [%s]", got, idle)
	}
	if got := r.m.TakeAutoPaused(); len(got) != 0 {
		t.Errorf("auto-paused ids reported twice: %v", got)
	}
	// The event got through on the third attempt, with one id throughout.
	waitFor(t, "the first accepted event", func() bool { _, acc, _ := es.snapshot(); return len(acc) == 1 })
	attempts, accepted, auth := es.snapshot()
	if len(attempts) != 3 {
		t.Errorf("%d delivery attempts, want 3 (two refused, one accepted)", len(attempts))
	}
	for _, a := range attempts {
		if a != accepted[0] {
			t.Errorf("a retried delivery differs from the accepted one: %+v vs %+v", a, accepted[0])
		}
	}
	ev := accepted[0]
	if ev.SandboxID != idle || ev.Type != EventAutoPaused || !id.Valid(id.Event, ev.EventID) || ev.Error != "" {
		t.Errorf("accepted event %+v, want auto_paused of %s with an evt- id", ev, idle)
	}
	if want := r.clock.Now(); !ev.Time.Equal(want) {
		t.Errorf("event time %s, want the clock's %s", ev.Time, want)
	}
	for _, a := range auth {
		if a != "Bearer host-token-1" {
			t.Errorf("Authorization %q, want the host token", a)
		}
	}

	// A timeout of 0 never pauses; busy passes its own timeout at t=16.
	r.tick(t, time.Hour)
	if got := r.stateOf(t, never); got != StateRunning {
		t.Errorf("sandbox without timeout is %s, want running", got)
	}
	if got := r.stateOf(t, busy); got != StatePaused {
		t.Errorf("busy sandbox is %s after its own timeout, want paused", got)
	}
	waitFor(t, "the second accepted event", func() bool { _, acc, _ := es.snapshot(); return len(acc) == 2 })
	attempts, accepted, _ = es.snapshot()
	if len(attempts) != 4 || accepted[1].SandboxID != busy || accepted[1].EventID == accepted[0].EventID {
		t.Errorf("second event: attempts %d, accepted %+v; want one more attempt for %s with a new id", len(attempts), accepted[1], busy)
	}
	// Paused sandboxes are not paused again.
	r.tick(t, time.Hour)
	time.Sleep(20 * time.Millisecond)
	if attempts, _, _ = es.snapshot(); len(attempts) != 4 {
		t.Errorf("%d delivery attempts after another idle hour, want still 4", len(attempts))
	}
	// Resume is activity: it restarts the timer from the resume.
	if _, err := r.m.Resume(ctx, idle); err != nil {
		t.Fatal(err)
	}
	r.tick(t, 5*time.Second)
	if got := r.stateOf(t, idle); got != StateRunning {
		t.Errorf("resumed sandbox is %s 5 s later, want running", got)
	}
	if err := r.m.DestroyAll(ctx); err != nil {
		t.Fatal(err)
	}
	r.assertEmpty(t)
}

func TestRunningExecIsNotIdle(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	ctx := context.Background()
	sid := newID()
	if _, err := r.m.Create(ctx, createReq(sid, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	sb, _ := r.m.Get(sid)
	_, done, err := r.m.begin(sb) // an exec in flight
	if err != nil {
		t.Fatal(err)
	}
	r.run(t)
	r.tick(t, time.Minute)
	if got := r.stateOf(t, sid); got != StateRunning {
		t.Fatalf("sandbox with an exec in flight is %s, want running", got)
	}
	done()
	r.tick(t, 11*time.Second)
	if got := r.stateOf(t, sid); got != StatePaused {
		t.Errorf("sandbox is %s 11 s after its exec ended, want paused", got)
	}
}

func TestSetTimeoutRestartsTimer(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	ctx := context.Background()
	sid := newID()
	if _, err := r.m.Create(ctx, createReq(sid, 0)); err != nil {
		t.Fatal(err)
	}
	r.run(t)
	r.tick(t, time.Hour)
	if err := r.m.SetTimeout(sid, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if rec := readRecord(t, r.dir, sid); rec.Timeout != 30*time.Second {
		t.Errorf("persisted timeout %s, want 30s", rec.Timeout)
	}
	r.tick(t, 20*time.Second)
	if got := r.stateOf(t, sid); got != StateRunning {
		t.Fatalf("paused 20 s into a 30 s timeout set after an hour of idleness: %s", got)
	}
	r.tick(t, 11*time.Second)
	if got := r.stateOf(t, sid); got != StatePaused {
		t.Errorf("state %s past the new timeout, want paused", got)
	}
	if err := r.m.SetTimeout(sid, -time.Second); !errors.Is(err, ErrInvalid) {
		t.Errorf("negative timeout: %v, want ErrInvalid", err)
	}
}

func TestFailedAutoPauseDestroysAndReports(t *testing.T) {
	t.Parallel()
	rep := &recordingReporter{}
	r := newRig(t, rep)
	ctx := context.Background()
	sid := newID()
	if _, err := r.m.Create(ctx, createReq(sid, time.Second)); err != nil {
		t.Fatal(err)
	}
	r.fail.set("runtime.pause", errInjected)
	r.run(t)
	r.tick(t, 2*time.Second)
	waitFor(t, "destroyed event", func() bool { return len(rep.all()) == 1 })
	ev := rep.all()[0]
	if ev.Type != EventDestroyed || ev.SandboxID != sid || ev.Error == "" {
		t.Errorf("event %+v, want destroyed of %s with the pause error", ev, sid)
	}
	if len(r.m.TakeAutoPaused()) != 0 {
		t.Error("a destroyed sandbox is listed as auto-paused")
	}
	r.assertEmpty(t)
}

// listingRuntime is the fake runtime with the one-call StateLister, as the
// OCI driver has; it counts the calls.
type listingRuntime struct {
	*fakeRuntime
	calls atomic.Int32
}

func (r *listingRuntime) States(context.Context) (map[string]runtime.State, error) {
	r.calls.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.containers), nil
}

func TestDeadSandboxIsReleasedAndReported(t *testing.T) {
	t.Parallel()
	for _, batched := range []bool{false, true} {
		t.Run(fmt.Sprintf("batched=%v", batched), func(t *testing.T) {
			t.Parallel()
			rep := &recordingReporter{}
			r := newRig(t, rep)
			r.m.o.HealthInterval = 5 * time.Second
			var lister *listingRuntime
			if batched {
				lister = &listingRuntime{fakeRuntime: r.rt}
				r.m.o.Runtime = lister
			}
			ctx := context.Background()
			dead, gone, alive := newID(), newID(), newID()
			for _, sid := range []string{dead, gone, alive} {
				if _, err := r.m.Create(ctx, createReq(sid, 0)); err != nil {
					t.Fatal(err)
				}
			}
			r.rt.kill(dead)
			r.rt.mu.Lock()
			delete(r.rt.containers, gone) // the runtime forgot it
			r.rt.mu.Unlock()
			r.run(t)
			r.tick(t, time.Second)
			if _, err := r.m.Get(dead); err != nil {
				t.Fatalf("released before the health interval: %v", err)
			}
			r.tick(t, 5*time.Second)
			for _, sid := range []string{dead, gone} {
				if _, err := r.m.Get(sid); !errors.Is(err, ErrNotFound) {
					t.Fatalf("dead sandbox %s still in the table: %v", sid, err)
				}
			}
			waitFor(t, "died events", func() bool { return len(rep.all()) == 2 })
			for _, ev := range rep.all() {
				if ev.Type != EventDied || (ev.SandboxID != dead && ev.SandboxID != gone) {
					t.Errorf("event %+v, want died of %s or %s", ev, dead, gone)
				}
			}
			if batched && lister.calls.Load() != 1 {
				t.Errorf("%d States calls for one health check, want 1", lister.calls.Load())
			}
			if _, err := r.m.Exec(ctx, alive, envdclient.ExecRequest{Cmd: "true", Timeout: 5 * time.Second}); err != nil {
				t.Errorf("the live sandbox was disturbed: %v", err)
			}
			if r.net.count() != 1 || r.img.count() != 1 {
				t.Errorf("networks %d, rootfs %d after the deaths, want 1 each", r.net.count(), r.img.count())
			}
			if err := r.m.DestroyAll(ctx); err != nil {
				t.Fatal(err)
			}
			r.assertEmpty(t)
		})
	}
}

func TestReporterStopsOnPermanentRefusal(t *testing.T) {
	t.Parallel()
	var calls int
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		calls++
		mu.Unlock()
		http.Error(w, `{"error":{"message":"unknown host"}}`, http.StatusUnauthorized)
	}))
	defer srv.Close()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	rep := &HTTPReporter{URL: srv.URL, Client: &http.Client{Transport: tr}, FirstBackoff: time.Millisecond}
	rep.SetToken("t")
	err := rep.Report(context.Background(), newEvent(newID(), EventDied, time.Now(), nil))
	if !errors.Is(err, errPermanent) {
		t.Errorf("Report: %v, want a permanent refusal", err)
	}
	if calls != 1 {
		t.Errorf("%d attempts on a 401, want 1", calls)
	}
	// Without a token, delivery waits until ctx ends.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := (&HTTPReporter{URL: srv.URL, Client: &http.Client{Transport: tr}}).Report(ctx, Event{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Report before registration: %v, want the context's deadline", err)
	}
}

package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/api"
	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// TestLifecycleRaces fires pause, resume and destroy at the same sandboxes
// concurrently in random order for 100 rounds, against a fake agent that
// refuses what the real one refuses and takes a random moment to answer.
// After every round the database must agree with the host; at the end,
// sandboxes whose writer "died" mid-transition (left transient by hand)
// must all be settled by one monitor pass.
func TestLifecycleRaces(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	_, tok := e.host("h")
	key := e.apiKey()

	jitter := func(context.Context, string) error {
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		return nil
	}
	e.fake.OnPause, e.fake.OnResume = jitter, jitter
	e.fake.OnDestroy = jitter
	a := api.New(api.Deps{DB: e.pool, Agents: e.fake, Now: e.clock.Now, AgentTimeout: 10 * time.Second})
	t.Cleanup(func() {
		wctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := a.Wait(wctx); err != nil {
			t.Errorf("background work at cleanup: %v", err)
		}
	})
	h := a.Handler()
	call := func(method, path string, body string) int {
		req := httptest.NewRequest(method, path, nil)
		if body != "" {
			req = httptest.NewRequest(method, path, stringsReader(body))
		}
		req.Header.Set("X-API-Key", key)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code
	}
	create := func() string {
		req := httptest.NewRequest("POST", "/v1/sandboxes", stringsReader(`{"template":"minimal"}`))
		req.Header.Set("X-API-Key", key)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusAccepted {
			t.Fatalf("create: %d %s", w.Code, w.Body)
		}
		var sb api.Sandbox
		must(t, json.Unmarshal(w.Body.Bytes(), &sb))
		return sb.ID
	}

	var all []string
	live := make([]string, 0, 4)
	for round := range 100 {
		for len(live) < 4 {
			sid := create()
			live = append(live, sid)
			all = append(all, sid)
		}
		var wg sync.WaitGroup
		bad := make(chan string, 64)
		for _, sid := range live {
			ops := []string{"pause", "resume", "pause", "resume"}
			if rand.IntN(6) == 0 {
				ops = append(ops, "destroy")
			}
			rand.Shuffle(len(ops), func(i, j int) { ops[i], ops[j] = ops[j], ops[i] })
			for _, op := range ops {
				wg.Add(1)
				go func() {
					defer wg.Done()
					time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond)
					var code int
					if op == "destroy" {
						code = call("DELETE", "/v1/sandboxes/"+sid, "")
					} else {
						code = call("POST", "/v1/sandboxes/"+sid+"/"+op, "")
					}
					if code != http.StatusAccepted && code != http.StatusConflict {
						bad <- fmt.Sprintf("%s %s: %d", op, sid, code)
					}
				}()
			}
		}
		wg.Wait()
		close(bad)
		for b := range bad {
			t.Errorf("round %d: %s", round, b)
		}
		e.waitQuiet(t)
		e.checkAgreement(t, all, round)
		kept := live[:0]
		for _, sid := range live {
			if e.row(sid).Status != string(lifecycle.Stopped) {
				kept = append(kept, sid)
			}
		}
		live = kept
		if t.Failed() {
			return
		}
	}

	// A control plane that died mid-operation leaves transient statuses
	// behind; one monitor pass past the grace period settles them all to
	// what the host says.
	for len(live) < 4 {
		sid := create()
		live = append(live, sid)
		all = append(all, sid)
	}
	e.waitQuiet(t)
	for i, sid := range live {
		st := []string{"pausing", "resuming", "stopping", "starting"}[i%4]
		if st == "starting" && e.row(sid).Status != string(lifecycle.Running) {
			// Only a sandbox the host runs can have been caught in
			// starting: a create never ends in paused. A paused one was
			// caught between its pause and the record of it.
			st = "pausing"
		}
		_, err := e.pool.Exec(ctx, "UPDATE sandboxes SET status = $2, updated_at = now() WHERE id = $1", sid, st)
		must(t, err)
	}
	// Within the grace period they are left alone: their writer may be alive.
	e.heartbeat(tok)
	e.pass()
	for _, sid := range live {
		if st := lifecycle.Status(e.row(sid).Status); !st.Transient() {
			t.Errorf("sandbox %s settled to %s within the grace period", sid, st)
		}
	}
	// The injected clock started with the test; the rows' updated_at is
	// the database's real clock.
	e.clock.Add(time.Since(e.clock.Now()) + 3*time.Minute + time.Second)
	e.heartbeat(tok)
	e.pass()
	var transient int
	must(t, e.pool.QueryRow(ctx, "SELECT count(*) FROM sandboxes WHERE status IN ('starting','pausing','resuming','stopping','snapshotting')").Scan(&transient))
	if transient != 0 {
		t.Errorf("%d transient statuses survived a monitor pass", transient)
	}
	e.checkAgreement(t, all, -1)
}

// waitQuiet waits until no sandbox is in a transient status: every
// background operation has recorded its outcome.
func (e *env) waitQuiet(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		must(t, e.pool.QueryRow(context.Background(), "SELECT count(*) FROM sandboxes WHERE status IN ('starting','pausing','resuming','stopping','snapshotting')").Scan(&n))
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sandboxes still transient after 10 s", n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// checkAgreement fails for every sandbox whose record and host state
// disagree.
func (e *env) checkAgreement(t *testing.T, ids []string, round int) {
	t.Helper()
	for _, sid := range ids {
		st := e.row(sid).Status
		hs, on := e.fake.State(sid)
		ok := false
		switch st {
		case "running":
			ok = on && hs == hostclient.StateRunning
		case "paused":
			ok = on && hs == hostclient.StatePaused
		case "stopped", "error":
			ok = !on
		}
		if !ok {
			t.Errorf("round %d: sandbox %s is %s in the database, host has it=%v state=%s", round, sid, st, on, hs)
		}
	}
}

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }

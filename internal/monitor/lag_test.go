package monitor

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wrenn/wrenn/internal/api"
	"github.com/wrenn/wrenn/internal/testenv"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// TestConsumerLagUnderRaces runs the race workload of TestLifecycleRaces
// (100 rounds of concurrent pause, resume and destroy in random order)
// with every outcome published to a real Redis and the event consumer
// applying it as the fallback writer. After every round the database must
// agree with the host, as without the consumer; the consumer must never be
// more than a second behind the stream head and must acknowledge
// everything. The largest lag is logged.
func TestConsumerLagUnderRaces(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	e.host("h")
	key := e.apiKey()
	jitter := func(context.Context, string) error {
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		return nil
	}
	e.fake.OnPause, e.fake.OnResume, e.fake.OnDestroy = jitter, jitter, jitter

	ropts, err := redis.ParseURL(testenv.Redis(t))
	must(t, err)
	rdb := redis.NewClient(ropts)
	t.Cleanup(func() { rdb.Close() })
	metrics := api.NewMetrics()
	a := api.New(api.Deps{DB: e.pool, Agents: e.fake, Now: e.clock.Now, AgentTimeout: 10 * time.Second, Events: events.NewRedisPublisher(rdb), Metrics: metrics})
	cons := events.NewConsumer(rdb, a.ApplyEvent, events.ConsumerOptions{Name: "lag-test", Block: 100 * time.Millisecond, OnLag: metrics.ObserveConsumerLag})
	must(t, rdb.XGroupCreateMkStream(ctx, events.Stream, events.DefaultGroup, "$").Err())
	cctx, stop := context.WithCancel(ctx)
	consumed := make(chan error, 1)
	go func() { consumed <- cons.Run(cctx) }()
	// Stop the consumer after background work ends (cleanups run last in,
	// first out), so it still sees the last outcomes.
	t.Cleanup(func() { stop(); <-consumed })
	t.Cleanup(func() {
		wctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := a.Wait(wctx); err != nil {
			t.Errorf("background work at cleanup: %v", err)
		}
	})
	h := a.Handler()
	call := func(method, path, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, stringsReader(body))
		req.Header.Set("X-API-Key", key)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w
	}

	var all, live []string
	for round := range 100 {
		for len(live) < 4 {
			w := call("POST", "/v1/sandboxes", `{"template":"minimal"}`)
			var sb api.Sandbox
			if w.Code != http.StatusAccepted || json.Unmarshal(w.Body.Bytes(), &sb) != nil {
				t.Fatalf("create: %d %s", w.Code, w.Body)
			}
			live, all = append(live, sb.ID), append(all, sb.ID)
		}
		var wg sync.WaitGroup
		for _, sid := range live {
			ops := []string{"pause", "resume", "pause", "resume"}
			if rand.IntN(6) == 0 {
				ops = append(ops, "destroy")
			}
			rand.Shuffle(len(ops), func(i, j int) { ops[i], ops[j] = ops[j], ops[i] })
			for _, op := range ops {
				wg.Go(func() {
					time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond)
					method, path := "POST", "/v1/sandboxes/"+sid+"/"+op
					if op == "destroy" {
						method, path = "DELETE", "/v1/sandboxes/"+sid
					}
					if w := call(method, path, ""); w.Code != http.StatusAccepted && w.Code != http.StatusConflict {
						t.Errorf("round %d: %s %s: %d", round, op, sid, w.Code)
					}
				})
			}
		}
		wg.Wait()
		e.waitQuiet(t)
		// The consumer applies outcomes late and out of step with their
		// writers; none may land on a later operation (an A-B-A, see
		// TestStaleEventAfterABA in internal/api).
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
	// Everything published was handled and acknowledged.
	deadline := time.Now().Add(10 * time.Second)
	for {
		p, err := rdb.XPending(ctx, events.Stream, events.DefaultGroup).Result()
		must(t, err)
		info, err := rdb.XInfoGroups(ctx, events.Stream).Result()
		must(t, err)
		if p.Count == 0 && len(info) == 1 && info[0].Lag == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer never caught up: %d pending, group %+v", p.Count, info)
		}
		time.Sleep(10 * time.Millisecond)
	}
	n, err := rdb.XLen(ctx, events.Stream).Result()
	must(t, err)
	maxLag := metrics.MaxConsumerLag()
	t.Logf("consumer max lag under the race workload: %v over %d events", maxLag, n)
	if n < 400 {
		t.Errorf("only %d events published in 100 rounds", n)
	}
	if maxLag > time.Second {
		t.Errorf("the consumer lagged %v behind the stream head, more than 1 s", maxLag)
	}
	if len(all) < 4 {
		t.Errorf("only %d sandboxes created", len(all))
	}
}

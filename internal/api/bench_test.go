package api

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/id"
)

// percentile returns the p-th percentile (0..100) of ds, nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// dbStatus waits, off the clock, until the sandbox row has status want.
func (e *env) dbStatus(sid, want string) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var s string
		must(e.t, e.pool.QueryRow(context.Background(), "SELECT status FROM sandboxes WHERE id = $1", sid).Scan(&s))
		if s == want {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("sandbox %s is %s, never became %s", sid, s, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkLifecycle202 measures how long create, pause, resume and destroy
// take to answer 202 (the work after it is not timed) against the fake
// agent, with real Postgres and Redis. One iteration is one sandbox's whole
// life; p50 and p99 per operation are reported in ms.
func BenchmarkLifecycle202(b *testing.B) {
	e := newEnv(b, withRedis)
	_, key := e.team(false)
	e.host("h1")
	ops := map[string][]time.Duration{}
	timed := func(op, method, path string, body any) resp {
		start := time.Now()
		r := e.do(method, path, key, body)
		ops[op] = append(ops[op], time.Since(start))
		if r.status != http.StatusAccepted {
			b.Fatalf("%s: %d %s", op, r.status, r.body)
		}
		return r
	}
	b.ResetTimer()
	for b.Loop() {
		var sb Sandbox
		timed("create", "POST", "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 256}).decode(b, &sb)
		e.dbStatus(sb.ID, "running")
		timed("pause", "POST", "/v1/sandboxes/"+sb.ID+"/pause", nil)
		e.dbStatus(sb.ID, "paused")
		timed("resume", "POST", "/v1/sandboxes/"+sb.ID+"/resume", nil)
		e.dbStatus(sb.ID, "running")
		timed("destroy", "DELETE", "/v1/sandboxes/"+sb.ID, nil)
		e.dbStatus(sb.ID, "stopped")
	}
	b.StopTimer()
	for _, op := range []string{"create", "pause", "resume", "destroy"} {
		b.ReportMetric(ms(percentile(ops[op], 50)), op+"-p50-ms")
		b.ReportMetric(ms(percentile(ops[op], 99)), op+"-p99-ms")
	}
}

// BenchmarkList1000 measures GET /v1/sandboxes for a team with 1000
// sandboxes; p50 and p99 are reported in ms.
func BenchmarkList1000(b *testing.B) {
	e := newEnv(b)
	teamID, key := e.team(false)
	hostID := e.host("h1")
	ctx := context.Background()
	for range 1000 {
		_, err := e.q.InsertSandbox(ctx, db.InsertSandboxParams{ID: id.New(id.Sandbox), TeamID: teamID, HostID: hostID, Template: "minimal", Vcpus: 1, MemoryMb: 256, TimeoutSec: 300})
		must(b, err)
	}
	var lat []time.Duration
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		r := e.do("GET", "/v1/sandboxes?limit=1000", key, nil)
		lat = append(lat, time.Since(start))
		if r.status != 200 {
			b.Fatalf("list: %d %s", r.status, r.body)
		}
	}
	b.StopTimer()
	var list struct{ Sandboxes []Sandbox }
	e.do("GET", "/v1/sandboxes?limit=1000", key, nil).decode(b, &list)
	if len(list.Sandboxes) != 1000 {
		b.Fatalf("listed %d sandboxes, want 1000", len(list.Sandboxes))
	}
	b.ReportMetric(ms(percentile(lat, 50)), "p50-ms")
	b.ReportMetric(ms(percentile(lat, 99)), "p99-ms")
}

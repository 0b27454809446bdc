package e2e

import (
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkConcurrentCreate issues 20 creates at once through the REST API
// on the real stack and waits until all are running. It reports, per
// sandbox, create → running p50 and p95, and the total time until the last
// one runs; then it destroys them all and checks that nothing leaked. The
// host has 2 cores, so the control plane gets a CPU overcommit that admits
// 20 one-vCPU sandboxes (memory stays a hard limit: 128 MiB each).
func BenchmarkConcurrentCreate(b *testing.B) {
	const n = 20
	// The stack's processes inherit the environment (startStack).
	b.Setenv("WRENN_CPU_OVERCOMMIT", "20")
	s := startStack(b)
	before := snapshotResources(b, s.dir)
	var per, totals []time.Duration
	var all []string
	b.ResetTimer()
	for range b.N {
		ids := make([]string, n)
		lat := make([]time.Duration, n)
		start := time.Now()
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				var sb sandbox
				code, err := s.do(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 128}, &sb)
				if err != nil || code != http.StatusAccepted {
					b.Errorf("create %d: %d %v", i, code, err)
					return
				}
				ids[i] = sb.ID
				s.waitStatus(sb.ID, "running", time.Minute)
				lat[i] = time.Since(start)
			})
		}
		wg.Wait()
		totals = append(totals, time.Since(start))
		per = append(per, lat...)
		b.StopTimer()
		for _, id := range ids {
			if id == "" {
				continue
			}
			all = append(all, id)
			s.mustDo(http.MethodDelete, "/v1/sandboxes/"+id, nil, http.StatusAccepted, nil)
		}
		for _, id := range ids {
			if id != "" {
				s.waitStatus(id, "stopped", time.Minute)
			}
		}
		if b.Failed() {
			b.FailNow()
		}
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(per)
	slices.Sort(totals)
	at := func(ds []time.Duration, p float64) float64 {
		return float64(ds[int(p*float64(len(ds)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(at(per, 0.50), "p50-ms")
	b.ReportMetric(at(per, 0.95), "p95-ms")
	b.ReportMetric(at(totals, 0.50), "all-running-ms")
	b.ReportMetric(0, "ns/op")
	assertNoLeaks(b, before, settledResources(b, s.dir, all...), all...)
}

package e2e

import (
	"net/http"
	"sort"
	"testing"
	"time"
)

// BenchmarkCreateToRunning measures, through the REST API, the time from
// POST /v1/sandboxes to the sandbox reading running, one sandbox at a time,
// and reports p50 and p95. Each sandbox is destroyed before the next.
func BenchmarkCreateToRunning(b *testing.B) {
	s := startStack(b)
	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		var sb sandbox
		s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal"}, http.StatusAccepted, &sb)
		s.waitStatus(sb.ID, "running", time.Minute)
		lat = append(lat, time.Since(start))
		b.StopTimer()
		s.mustDo(http.MethodDelete, "/v1/sandboxes/"+sb.ID, nil, http.StatusAccepted, nil)
		s.waitStatus(sb.ID, "stopped", time.Minute)
		b.StartTimer()
	}
	reportPercentiles(b, lat)
}

// BenchmarkExecRoundTrip measures POST /v1/sandboxes/{id}/exec of `true`
// through control plane, agent and envd, and reports p50 and p95.
func BenchmarkExecRoundTrip(b *testing.B) {
	s := startStack(b)
	var sb sandbox
	s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal"}, http.StatusAccepted, &sb)
	s.waitStatus(sb.ID, "running", time.Minute)
	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		var res execResult
		s.mustDo(http.MethodPost, "/v1/sandboxes/"+sb.ID+"/exec", map[string]any{"cmd": "true", "args": []string{}}, http.StatusOK, &res)
		lat = append(lat, time.Since(start))
		if res.ExitCode != 0 {
			b.Fatalf("true exited %d", res.ExitCode)
		}
	}
	b.StopTimer()
	reportPercentiles(b, lat)
	s.mustDo(http.MethodDelete, "/v1/sandboxes/"+sb.ID, nil, http.StatusAccepted, nil)
	s.waitStatus(sb.ID, "stopped", time.Minute)
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	at := func(p float64) float64 {
		return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(at(0.50), "p50-ms")
	b.ReportMetric(at(0.95), "p95-ms")
	b.ReportMetric(0, "ns/op")
}

package e2e

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
)

// BenchmarkPauseResume measures the agent's PauseSandbox and ResumeSandbox
// RPCs on a real runc sandbox (freezer, plus envd's /init after resume) and
// reports the p50 and p95 of each.
func BenchmarkPauseResume(b *testing.B) {
	s := startStack(b)
	id := s.createRunning()
	agent := s.agentClient()
	ctx := context.Background()
	var pause, resume []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := agent.PauseSandbox(ctx, connect.NewRequest(&hostagentv1.PauseSandboxRequest{SandboxId: id})); err != nil {
			b.Fatalf("pause: %v", err)
		}
		mid := time.Now()
		if _, err := agent.ResumeSandbox(ctx, connect.NewRequest(&hostagentv1.ResumeSandboxRequest{SandboxId: id})); err != nil {
			b.Fatalf("resume: %v", err)
		}
		pause, resume = append(pause, mid.Sub(start)), append(resume, time.Since(mid))
	}
	b.StopTimer()
	p50 := func(l []time.Duration) float64 {
		slices.Sort(l)
		return float64(l[len(l)/2].Microseconds()) / 1000
	}
	p95 := func(l []time.Duration) float64 {
		slices.Sort(l)
		return float64(l[int(0.95*float64(len(l)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(p50(pause), "pause-p50-ms")
	b.ReportMetric(p95(pause), "pause-p95-ms")
	b.ReportMetric(p50(resume), "resume-p50-ms")
	b.ReportMetric(p95(resume), "resume-p95-ms")
	b.ReportMetric(0, "ns/op")
	if res := s.exec(id, "echo ok"); res.Stdout != "ok\n" {
		b.Errorf("sandbox after %d pause/resume cycles: %+v", b.N, res)
	}
	s.mustDo(http.MethodDelete, "/v1/sandboxes/"+id, nil, http.StatusAccepted, nil)
	s.waitStatus(id, "stopped", time.Minute)
}

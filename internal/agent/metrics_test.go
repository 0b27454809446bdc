package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
	"unsafe"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/wrenn/wrenn/internal/runtime"
	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
	"github.com/wrenn/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// statsRuntime is the fake runtime with settable stats.
type statsRuntime struct {
	*fakeRuntime
	mu sync.Mutex
	st runtime.Stats
}

func (r *statsRuntime) Stats(ctx context.Context, id string) (runtime.Stats, error) {
	if _, err := r.fakeRuntime.State(ctx, id); err != nil {
		return runtime.Stats{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st, nil
}

func (r *statsRuntime) set(cpu time.Duration, mem uint64) {
	r.mu.Lock()
	r.st = runtime.Stats{CPUUsage: cpu, MemoryBytes: mem}
	r.mu.Unlock()
}

func TestMetricsSampler(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	srt := &statsRuntime{fakeRuntime: r.rt}
	opts := r.opts
	opts.Runtime = srt
	m, err := NewManager(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sid := newID()
	if _, err := m.Create(ctx, createReq(sid, time.Hour)); err != nil {
		t.Fatal(err)
	}
	// A day of samples per sandbox is what the ring's size budget is about.
	if n := unsafe.Sizeof(packedSample{}); n != 32 {
		t.Errorf("a stored sample takes %d bytes, want 32", n)
	}
	ms := NewMetricsSampler(m, 5*time.Second, 3)
	ms.diskUsage = func(string) (uint64, error) { return 4096, nil }

	// Half a core for 5 s, then two full cores.
	start := r.clock.Now()
	for i, cpu := range []time.Duration{0, 2500 * time.Millisecond, 12500 * time.Millisecond} {
		if i > 0 {
			r.clock.advance(5 * time.Second)
		}
		srt.set(cpu, uint64(100+i))
		ms.SampleAll(ctx)
	}
	got, err := ms.Samples(ctx, sid, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	wantCPU := []float64{0, 50, 200}
	if len(got) != 3 {
		t.Fatalf("%d samples, want 3: %v", len(got), got)
	}
	for i, s := range got {
		if s.CPUPercent != wantCPU[i] || s.MemoryBytes != uint64(100+i) || s.DiskBytes != 4096 {
			t.Errorf("sample %d: %+v, want cpu %v", i, s, wantCPU[i])
		}
	}

	// The ring keeps the newest capacity samples, oldest first.
	r.clock.advance(5 * time.Second)
	srt.set(12500*time.Millisecond, 999)
	ms.SampleAll(ctx)
	got, _ = ms.Samples(ctx, sid, time.Time{})
	if len(got) != 3 || got[0].MemoryBytes != 101 || got[2].MemoryBytes != 999 || got[2].CPUPercent != 0 {
		t.Errorf("after wrap: %+v", got)
	}
	got, _ = ms.Samples(ctx, sid, start.Add(10*time.Second))
	if len(got) != 1 || got[0].MemoryBytes != 999 {
		t.Errorf("since filter: %+v", got)
	}

	// Over Connect, then gone with the sandbox.
	svc := &Service{m: m, metrics: ms}
	_, h := hostagentv1connect.NewHostAgentServiceHandler(svc)
	c := connectClient(t, h)
	res, err := c.GetSandboxMetrics(ctx, connect.NewRequest(&hostagentv1.GetSandboxMetricsRequest{SandboxId: sid, Since: timestamppb.New(start.Add(5 * time.Second))}))
	if err != nil || len(res.Msg.GetSamples()) != 2 || res.Msg.GetIntervalSec() != 5 {
		t.Fatalf("rpc: %v %v", res, err)
	}
	if err := m.Destroy(ctx, sid); err != nil {
		t.Fatal(err)
	}
	ms.SampleAll(ctx)
	ms.mu.Lock()
	left := len(ms.rings)
	ms.mu.Unlock()
	if left != 0 {
		t.Errorf("%d rings left after destroy", left)
	}
	_, err = c.GetSandboxMetrics(ctx, connect.NewRequest(&hostagentv1.GetSandboxMetricsRequest{SandboxId: sid}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("metrics of destroyed sandbox: %v", err)
	}
}

func connectClient(t *testing.T, h http.Handler) hostagentv1connect.HostAgentServiceClient {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return hostagentv1connect.NewHostAgentServiceClient(&http.Client{Transport: tr}, srv.URL)
}

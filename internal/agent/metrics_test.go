package agent

import (
	"context"
	"encoding/json"
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

// statsRig is a rig whose manager runs on a statsRuntime.
func statsRig(t *testing.T) (*rig, *statsRuntime, *Manager) {
	t.Helper()
	r := newRig(t, nil)
	srt := &statsRuntime{fakeRuntime: r.rt}
	opts := r.opts
	opts.Runtime = srt
	m, err := NewManager(opts)
	if err != nil {
		t.Fatal(err)
	}
	return r, srt, m
}

func TestMetricsSampler(t *testing.T) {
	t.Parallel()
	r, srt, m := statsRig(t)
	ctx := context.Background()
	sid := newID()
	if _, err := m.Create(ctx, createReq(sid, time.Hour)); err != nil {
		t.Fatal(err)
	}
	// A day of samples per sandbox is what the ring's size budget is about.
	if n := unsafe.Sizeof(packedSample{}); n != 32 {
		t.Errorf("a stored sample takes %d bytes, want 32", n)
	}
	ms := NewMetricsSampler(m, nil, 5*time.Second, 3)
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

// flushRecorder is a control plane that records metric flushes; it refuses
// the first delivery with a 503 so the retry is exercised.
type flushRecorder struct {
	mu      sync.Mutex
	refused bool
	auth    []string
	flushes []struct {
		SandboxID string         `json:"sandbox_id"`
		Samples   []metricSample `json:"samples"`
	}
}

func (f *flushRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.URL.Path != "/v1/hosts/sandbox-metrics" {
		http.NotFound(w, r)
		return
	}
	if !f.refused {
		f.refused = true
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return
	}
	var body struct {
		SandboxID string         `json:"sandbox_id"`
		Samples   []metricSample `json:"samples"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.flushes = append(f.flushes, body)
	f.auth = append(f.auth, r.Header.Get("Authorization"))
	w.WriteHeader(http.StatusOK)
}

func (f *flushRecorder) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.flushes)
}

func TestMetricsFlushedBeforePauseAndDestroy(t *testing.T) {
	t.Parallel()
	r, srt, m := statsRig(t)
	rec := &flushRecorder{}
	srv := httptest.NewServer(rec)
	t.Cleanup(srv.Close)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	rep := &HTTPReporter{URL: srv.URL, Client: &http.Client{Transport: tr}, FirstBackoff: time.Millisecond}
	rep.SetToken("wrh_flush")
	ms := NewMetricsSampler(m, rep, 5*time.Second, 100)
	ms.diskUsage = func(string) (uint64, error) { return 4096, nil }
	t.Cleanup(func() { ms.Close(time.Second) })

	ctx := context.Background()
	sid := newID()
	if _, err := m.Create(ctx, createReq(sid, time.Hour)); err != nil {
		t.Fatal(err)
	}
	// Two sweeps, then a pause a second after the second: the pause takes
	// a third sample itself (a full core over that second).
	for i, cpu := range []time.Duration{0, 2500 * time.Millisecond} {
		if i > 0 {
			r.clock.advance(5 * time.Second)
		}
		srt.set(cpu, 100)
		ms.SampleAll(ctx)
	}
	r.clock.advance(time.Second)
	srt.set(3500*time.Millisecond, 200)
	if _, err := m.Pause(ctx, sid); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "flush before pause", func() bool { return rec.count() == 1 })
	rec.mu.Lock()
	first := rec.flushes[0]
	auth := rec.auth[0]
	rec.mu.Unlock()
	if first.SandboxID != sid || len(first.Samples) != 3 || auth != "Bearer wrh_flush" {
		t.Fatalf("flush before pause: %+v (auth %q), want 3 samples of %s with the host token", first, auth, sid)
	}
	if last := first.Samples[2]; last.CPUPercent != 100 || last.MemoryBytes != 200 || last.DiskBytes != 4096 {
		t.Errorf("the pause's own sample: %+v, want a full core, 200 bytes, 4096 on disk", last)
	}

	// Resumed, sampled once more, destroyed: only what came after the
	// first flush goes, the destroy's own sample included. (The mark moves
	// once a delivery's answer is in.)
	ms.flushes.Wait()
	if _, err := m.Resume(ctx, sid); err != nil {
		t.Fatal(err)
	}
	r.clock.advance(5 * time.Second)
	ms.SampleAll(ctx)
	r.clock.advance(time.Second)
	if err := m.Destroy(ctx, sid); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "flush before destroy", func() bool { return rec.count() == 2 })
	rec.mu.Lock()
	second := rec.flushes[1]
	rec.mu.Unlock()
	if len(second.Samples) != 2 || !second.Samples[0].Time.After(first.Samples[2].Time) {
		t.Errorf("flush before destroy: %+v, want the 2 samples after %s", second.Samples, first.Samples[2].Time)
	}
	ms.mu.Lock()
	left := len(ms.rings)
	ms.mu.Unlock()
	if left != 0 {
		t.Errorf("%d rings left after destroy", left)
	}
}

// A day's ring goes in deliveries of at most maxFlushSamples, in order, and
// a later flush sends only what came after the last accepted one.
func TestMetricsFlushInChunks(t *testing.T) {
	t.Parallel()
	r, srt, m := statsRig(t)
	rec := &flushRecorder{refused: true}
	srv := httptest.NewServer(rec)
	t.Cleanup(srv.Close)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	rep := &HTTPReporter{URL: srv.URL, Client: &http.Client{Transport: tr}}
	rep.SetToken("wrh_chunks")
	ms := NewMetricsSampler(m, rep, 5*time.Second, 3*maxFlushSamples)
	ms.diskUsage = func(string) (uint64, error) { return 0, nil }
	t.Cleanup(func() { ms.Close(time.Second) })
	ctx := context.Background()
	sid := newID()
	if _, err := m.Create(ctx, createReq(sid, 0)); err != nil {
		t.Fatal(err)
	}
	n := maxFlushSamples + maxFlushSamples/2
	for i := range n {
		r.clock.advance(5 * time.Second)
		srt.set(time.Duration(i)*time.Second, uint64(i))
		ms.SampleAll(ctx)
	}
	if _, err := m.Pause(ctx, sid); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two deliveries", func() bool { return rec.count() == 2 })
	rec.mu.Lock()
	first, second := rec.flushes[0].Samples, rec.flushes[1].Samples
	rec.mu.Unlock()
	// The pause's own sample comes on top of the sweeps'.
	if len(first) != maxFlushSamples || len(second) != n+1-maxFlushSamples {
		t.Fatalf("deliveries of %d and %d samples, want %d and %d", len(first), len(second), maxFlushSamples, n+1-maxFlushSamples)
	}
	if !second[0].Time.After(first[len(first)-1].Time) {
		t.Errorf("second delivery starts at %s, not after the first's end %s", second[0].Time, first[len(first)-1].Time)
	}
	// The mark moves once a delivery's answer is in.
	ms.flushes.Wait()
	if _, err := m.Resume(ctx, sid); err != nil {
		t.Fatal(err)
	}
	r.clock.advance(time.Second)
	if err := m.Destroy(ctx, sid); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "destroy's delivery", func() bool { return rec.count() == 3 })
	rec.mu.Lock()
	third := rec.flushes[2].Samples
	rec.mu.Unlock()
	if len(third) != 1 {
		t.Errorf("destroy sent %d samples, want only its own", len(third))
	}
}

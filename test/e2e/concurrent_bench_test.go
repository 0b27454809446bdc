package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkConcurrentCreate issues 20 creates at once through the REST API
// on the real stack and waits until all are running. It reports, per
// sandbox, create → running p50 and p95, and the total time until the last
// one runs; then it destroys them all and checks that nothing leaked. Each
// iteration is one wave; run several (-benchtime 5x) to see that a wave
// after a destroyed one starts as well as the first. The host has 2 cores,
// so the control plane gets a CPU overcommit that admits 20 one-vCPU
// sandboxes (memory stays a hard limit: 128 MiB each).
//
// The client learns that a sandbox runs as SDKs do, from the team's event
// stream (GET /v1/events), and then reads the sandbox once to confirm its
// record says running: twenty clients polling every few milliseconds would
// load the 2-core host with hundreds of requests a second, measuring the
// polling as much as the creates.
func BenchmarkConcurrentCreate(b *testing.B) {
	const n = 20
	// The stack's processes inherit the environment (startStack).
	b.Setenv("WRENN_CPU_OVERCOMMIT", "20")
	s := startStack(b)
	before := snapshotResources(b, s.dir)
	var per, totals []time.Duration
	var all []string
	b.ResetTimer()
	for wave := range b.N {
		w := s.watchStatus()
		ids := make([]string, n)
		lat := make([]time.Duration, n)
		start := time.Now()
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				var sb sandbox
				code, err := s.do(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 128}, &sb)
				if err != nil || code != http.StatusAccepted {
					b.Errorf("wave %d: create %d: %d %v", wave, i, code, err)
					return
				}
				ids[i] = sb.ID
				if err := w.waitRunning(sb.ID, time.Minute); err != nil {
					b.Errorf("wave %d: %v", wave, err)
					return
				}
				lat[i] = time.Since(start)
			})
		}
		wg.Wait()
		totals = append(totals, time.Since(start))
		w.close()
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
			b.Logf("host agent says:\n%s", s.agent.tail())
			b.FailNow()
		}
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(per)
	at := func(ds []time.Duration, p float64) float64 {
		return float64(ds[int(p*float64(len(ds)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(at(per, 0.50), "p50-ms")
	b.ReportMetric(at(per, 0.95), "p95-ms")
	b.ReportMetric(at(slices.Sorted(slices.Values(totals)), 0.50), "all-running-ms")
	b.ReportMetric(slices.Max(totals).Seconds()*1000, "all-running-max-ms")
	b.ReportMetric(0, "ns/op")
	b.Logf("all running per wave: %v", totals)
	assertNoLeaks(b, before, settledResources(b, s.dir, all...), all...)
}

// statusWatch follows the stack's event stream and remembers, per sandbox,
// the first status change to running or error.
type statusWatch struct {
	s      *stack
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	settled map[string]string // sandbox id → "running", or the error
	changed chan struct{}     // closed and replaced on every change
	err     error             // why the stream ended early
}

// watchStatus opens GET /v1/events; it returns once the stream is
// connected, so no change after it is missed.
func (s *stack) watchStatus() *statusWatch {
	s.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.apiURL+"/v1/events", nil)
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("X-API-Key", s.apiKey)
	resp, err := s.client.Do(req)
	if err != nil {
		cancel()
		s.t.Fatalf("open event stream: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		s.t.Fatalf("open event stream: %s", resp.Status)
	}
	w := &statusWatch{s: s, cancel: cancel, done: make(chan struct{}), settled: map[string]string{}, changed: make(chan struct{})}
	r := bufio.NewReader(resp.Body)
	// The handler writes a comment once it reads the stream.
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, ":") {
		resp.Body.Close()
		cancel()
		s.t.Fatalf("event stream did not connect: %q %v", line, err)
	}
	go func() {
		defer close(w.done)
		defer resp.Body.Close()
		var event string
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				w.mu.Lock()
				w.err = fmt.Errorf("event stream ended: %w", err)
				close(w.changed)
				w.changed = make(chan struct{})
				w.mu.Unlock()
				return
			}
			line = strings.TrimRight(line, "\r\n")
			switch {
			case strings.HasPrefix(line, "event: "):
				event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: ") && event == "status":
				var c struct {
					SandboxID string `json:"sandbox_id"`
					To        string `json:"to"`
					Error     string `json:"error"`
				}
				if json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &c) != nil {
					continue
				}
				if c.To != "running" && c.To != "error" {
					continue
				}
				w.mu.Lock()
				if _, ok := w.settled[c.SandboxID]; !ok {
					w.settled[c.SandboxID] = c.To + " " + c.Error
					close(w.changed)
					w.changed = make(chan struct{})
				}
				w.mu.Unlock()
			case line == "":
				event = ""
			}
		}
	}()
	return w
}

// waitRunning waits for the stream to say sandboxID runs, then confirms it
// with one read of the sandbox (the event is published just before the
// record is written, so the read retries briefly).
func (w *statusWatch) waitRunning(sandboxID string, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		got, ok := w.settled[sandboxID]
		changed, err := w.changed, w.err
		w.mu.Unlock()
		if ok {
			if got != "running " {
				return fmt.Errorf("sandbox %s: %s", sandboxID, got)
			}
			break
		}
		if err != nil {
			return err
		}
		select {
		case <-changed:
		case <-deadline:
			return fmt.Errorf("sandbox %s not running after %s", sandboxID, timeout)
		}
	}
	for range 200 {
		var sb sandbox
		code, err := w.s.do(http.MethodGet, "/v1/sandboxes/"+sandboxID, nil, &sb)
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("read sandbox %s: %d %v", sandboxID, code, err)
		}
		if sb.Status == "running" {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
	return fmt.Errorf("sandbox %s: the stream said running, its record does not", sandboxID)
}

func (w *statusWatch) close() {
	w.cancel()
	<-w.done
}

package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/wrenn/wrenn/pkg/id"
)

// EventType names a change the agent made to a sandbox on its own.
type EventType string

// The sandbox events the agent pushes to the control plane.
const (
	// EventAutoPaused: the sandbox was idle past its timeout and is paused.
	EventAutoPaused EventType = "auto_paused"
	// EventDied: the sandbox's init exited on its own; everything it held
	// is released.
	EventDied EventType = "died"
	// EventDestroyed: the agent destroyed the sandbox because it could not
	// pause it; Error says why.
	EventDestroyed EventType = "destroyed"
)

// Event is the body of POST /v1/hosts/sandbox-events. EventID is fixed when
// the event is made, so a delivery retried after a lost answer is recognised
// by the control plane as the same event.
type Event struct {
	EventID   string    `json:"event_id"`
	SandboxID string    `json:"sandbox_id"`
	Type      EventType `json:"type"`
	Time      time.Time `json:"time"`
	Error     string    `json:"error,omitempty"`
}

func newEvent(sandboxID string, t EventType, at time.Time, cause error) Event {
	ev := Event{EventID: id.New(id.Event), SandboxID: sandboxID, Type: t, Time: at.UTC()}
	if cause != nil {
		ev.Error = cause.Error()
	}
	return ev
}

// Reporter delivers one sandbox event to the control plane, retrying as it
// sees fit, and returns when it was accepted, refused for good, or ctx ended.
type Reporter interface {
	Report(ctx context.Context, ev Event) error
}

// HTTPReporter posts events and flushed metrics to the control plane with
// the host token, retrying failed deliveries with exponential backoff.
type HTTPReporter struct {
	// URL is the control plane's base URL.
	URL    string
	Client *http.Client
	Logger *slog.Logger
	// FirstBackoff is the wait after the first failure (0: 500 ms); it
	// doubles up to MaxBackoff (0: 30 s).
	FirstBackoff time.Duration
	MaxBackoff   time.Duration

	mu    sync.Mutex
	token string
	ready chan struct{} // closed once a token is set
}

// SetToken gives the reporter the host token from registration. Events made
// before it wait for it.
func (r *HTTPReporter) SetToken(token string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.init()
	if r.token == "" && token != "" {
		close(r.ready)
	}
	r.token = token
}

func (r *HTTPReporter) init() {
	if r.ready == nil {
		r.ready = make(chan struct{})
	}
}

// errPermanent marks an answer that retrying cannot change.
var errPermanent = errors.New("refused by control plane")

// Report implements Reporter. A 4xx answer other than 408 and 429 is final
// (the event is malformed or the host not known); anything else is retried
// until ctx ends.
func (r *HTTPReporter) Report(ctx context.Context, ev Event) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode event: %w", err)
	}
	if err := r.deliver(ctx, "/v1/hosts/sandbox-events", body, "event_id", ev.EventID, ev.SandboxID); err != nil {
		return fmt.Errorf("report %s event of %s: %w", ev.Type, ev.SandboxID, err)
	}
	return nil
}

// metricSample is a Sample as POST /v1/hosts/sandbox-metrics takes it.
type metricSample struct {
	Time        time.Time `json:"time"`
	CPUPercent  float64   `json:"cpu_percent"`
	MemoryBytes uint64    `json:"memory_bytes"`
	DiskBytes   uint64    `json:"disk_bytes"`
}

// ReportMetrics implements MetricsReporter like Report: retried with backoff
// until accepted, refused for good, or ctx ends. The control plane keys
// samples by sandbox and time, so a redelivery stores nothing twice.
func (r *HTTPReporter) ReportMetrics(ctx context.Context, sandboxID string, samples []Sample) error {
	wire := struct {
		SandboxID string         `json:"sandbox_id"`
		Samples   []metricSample `json:"samples"`
	}{SandboxID: sandboxID, Samples: make([]metricSample, len(samples))}
	for i, s := range samples {
		wire.Samples[i] = metricSample(s)
	}
	body, err := json.Marshal(wire)
	if err != nil {
		return fmt.Errorf("encode metrics: %w", err)
	}
	if err := r.deliver(ctx, "/v1/hosts/sandbox-metrics", body, "samples", len(samples), sandboxID); err != nil {
		return fmt.Errorf("flush %d metric samples of %s: %w", len(samples), sandboxID, err)
	}
	return nil
}

// deliver posts body to path once a host token is set, retrying with
// exponential backoff; logKey and logValue name the delivery in the log.
func (r *HTTPReporter) deliver(ctx context.Context, path string, body []byte, logKey string, logValue any, sandboxID string) error {
	r.mu.Lock()
	r.init()
	ready := r.ready
	r.mu.Unlock()
	select {
	case <-ready:
	case <-ctx.Done():
		return fmt.Errorf("not registered yet: %w", ctx.Err())
	}
	backoff := r.FirstBackoff
	if backoff <= 0 {
		backoff = 500 * time.Millisecond
	}
	maxBackoff := r.MaxBackoff
	if maxBackoff <= 0 {
		maxBackoff = 30 * time.Second
	}
	for attempt := 1; ; attempt++ {
		err := r.post(ctx, path, body)
		if err == nil {
			return nil
		}
		if errors.Is(err, errPermanent) {
			return err
		}
		if r.Logger != nil {
			r.Logger.Warn("delivery to the control plane failed, retrying", "path", path, "sandbox_id", sandboxID,
				logKey, logValue, "attempt", attempt, "err", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up after %d attempts: %w", attempt, err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func (r *HTTPReporter) post(ctx context.Context, path string, body []byte) error {
	r.mu.Lock()
	token := r.token
	r.mu.Unlock()
	reqCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(reqCtx, http.MethodPost, strings.TrimRight(r.URL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: build request: %w", errPermanent, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := r.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch {
	case resp.StatusCode/100 == 2:
		return nil
	case resp.StatusCode/100 == 4 && resp.StatusCode != http.StatusRequestTimeout && resp.StatusCode != http.StatusTooManyRequests:
		return fmt.Errorf("%w: %s: %s", errPermanent, resp.Status, bytes.TrimSpace(msg))
	}
	return fmt.Errorf("control plane answered %s: %s", resp.Status, bytes.TrimSpace(msg))
}

// report hands ev to the reporter in the background: sandbox operations never
// wait for the control plane.
func (m *Manager) report(ev Event) {
	if m.o.Reporter == nil {
		return
	}
	m.reports.Go(func() {
		if err := m.o.Reporter.Report(m.reportCtx, ev); err != nil {
			m.log.Error("sandbox event lost", "sandbox_id", ev.SandboxID, "event_id", ev.EventID, "type", ev.Type, "err", err)
		}
	})
}

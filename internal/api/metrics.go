package api

import (
	"context"
	"crypto/subtle"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// Metrics are the control plane's Prometheus series, served at /metrics:
// request latency by route pattern and status class, background lifecycle
// operations by kind and outcome with their duration, and the event
// consumer's lag behind the stream head. Each Metrics has a registry of its
// own, so several control planes (tests) in one process never collide.
type Metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.HistogramVec
	ops      *prometheus.HistogramVec
	lag      prometheus.Gauge
	lagMax   prometheus.Gauge
	maxLag   atomic.Int64
}

// NewMetrics returns the control plane's metrics on a fresh registry that
// also carries the Go runtime and process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wrenn_http_request_duration_seconds",
			Help:    "Time to answer an API request, by method, route pattern and status class (2xx, 4xx, ...). Streams count until they end.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"method", "route", "code"}),
		ops: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wrenn_lifecycle_operation_duration_seconds",
			Help:    "Duration of a background lifecycle operation (create, pause, resume, destroy, snapshot) from its 202 to its recorded outcome (ok or error).",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"kind", "outcome"}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wrenn_event_consumer_lag_seconds",
			Help: "How far this replica's event consumer is behind the head of wrenn:events: the age of the newest event it last handled, 0 when caught up.",
		}),
		lagMax: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wrenn_event_consumer_lag_max_seconds",
			Help: "The largest event consumer lag this replica has seen since it started.",
		}),
	}
	m.reg.MustRegister(m.requests, m.ops, m.lag, m.lagMax,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry lets extensions add their own series to /metrics.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// metricsAuth requires Deps.MetricsToken as a bearer token, when one is
// configured; the comparison takes the same time whatever the guess.
func (a *API) metricsAuth(next http.Handler) http.Handler {
	if a.d.MetricsToken == "" {
		return next
	}
	want := []byte(a.d.MetricsToken)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(bearer(r)), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="wrenn metrics"`)
			a.fail(w, r, unauthorized("GET /metrics needs Authorization: Bearer <WRENN_METRICS_TOKEN>"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// ObserveConsumerLag records the event consumer's lag; cpserver hands it to
// events.ConsumerOptions.OnLag.
func (m *Metrics) ObserveConsumerLag(d time.Duration) {
	m.lag.Set(d.Seconds())
	for {
		cur := m.maxLag.Load()
		if int64(d) <= cur {
			return
		}
		if m.maxLag.CompareAndSwap(cur, int64(d)) {
			m.lagMax.Set(d.Seconds())
			return
		}
	}
}

// MaxConsumerLag is the largest lag ObserveConsumerLag saw.
func (m *Metrics) MaxConsumerLag() time.Duration { return time.Duration(m.maxLag.Load()) }

// instrument times every request by the route pattern chi matched, so
// sandbox ids never become label values. Unknown paths under /v1 count as
// "/v1/*"; port traffic and other paths that match no pattern share
// "unmatched", so labels stay bounded whatever callers send.
func (a *API) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		route := "unmatched"
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
			route = rc.RoutePattern()
		}
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		a.metrics.requests.WithLabelValues(r.Method, route, strconv.Itoa(status/100)+"xx").Observe(time.Since(start).Seconds())
	})
}

// opTimer travels in a background operation's context so the outcome it
// publishes is timed from the 202 that started it, once.
type opTimer struct {
	start time.Time
	done  atomic.Bool
}

type opTimerKey struct{}

func withOpTimer(ctx context.Context, start time.Time) context.Context {
	return context.WithValue(ctx, opTimerKey{}, &opTimer{start: start})
}

// opKinds names the operation an outcome ends by the transient status it
// leaves.
var opKinds = map[lifecycle.Status]string{
	lifecycle.Starting:     "create",
	lifecycle.Pausing:      "pause",
	lifecycle.Resuming:     "resume",
	lifecycle.Stopping:     "destroy",
	lifecycle.Snapshotting: "snapshot",
}

// observeOutcome records the first outcome a background operation
// publishes; events outside background work (monitor, callbacks) are not
// operations the API timed.
func (a *API) observeOutcome(ctx context.Context, e events.Event) {
	t, ok := ctx.Value(opTimerKey{}).(*opTimer)
	if !ok {
		return
	}
	kind, ok := opKinds[e.From]
	if !ok || !t.done.CompareAndSwap(false, true) {
		return
	}
	outcome := "ok"
	if e.Error != "" {
		outcome = "error"
	}
	a.metrics.ops.WithLabelValues(kind, outcome).Observe(time.Since(t.start).Seconds())
}

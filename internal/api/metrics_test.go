package api

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape reads /metrics and returns each sample line's value by its series
// (name plus labels, as written).
func scrape(t *testing.T, e *env) map[string]float64 {
	t.Helper()
	r := e.do("GET", "/metrics", "", nil)
	if r.status != 200 || !strings.HasPrefix(r.hdr.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %d %s", r.status, r.hdr.Get("Content-Type"))
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(r.body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func TestMetricsScrape(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	e.host("h1")
	var sb Sandbox
	if r := e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"}); r.status != 202 {
		t.Fatalf("create: %d %s", r.status, r.body)
	} else {
		r.decode(t, &sb)
	}
	e.waitStatus(key, sb.ID, "running")
	if r := e.do("POST", "/v1/sandboxes/"+sb.ID+"/pause", key, nil); r.status != 202 {
		t.Fatalf("pause: %d", r.status)
	}
	e.waitStatus(key, sb.ID, "paused")
	e.do("GET", "/v1/sandboxes/sb-nothere", key, nil)
	e.do("GET", "/v1/nowhere", key, nil)
	e.api.d.Metrics.ObserveConsumerLag(250 * time.Millisecond)
	e.api.d.Metrics.ObserveConsumerLag(0)

	m := scrape(t, e)
	for _, tc := range []struct {
		series   string
		min, max float64
	}{
		// One create answered 202; the pattern, not the id, is the label.
		{`wrenn_http_request_duration_seconds_count{code="2xx",method="POST",route="/v1/sandboxes"}`, 1, 1},
		{`wrenn_http_request_duration_seconds_sum{code="2xx",method="POST",route="/v1/sandboxes"}`, 1e-9, 5},
		{`wrenn_http_request_duration_seconds_count{code="2xx",method="POST",route="/v1/sandboxes/{id}/pause"}`, 1, 1},
		{`wrenn_http_request_duration_seconds_count{code="4xx",method="GET",route="/v1/sandboxes/{id}"}`, 1, 1},
		{`wrenn_http_request_duration_seconds_count{code="4xx",method="GET",route="/v1/*"}`, 1, 1},
		// waitStatus polled at least once per state.
		{`wrenn_http_request_duration_seconds_count{code="2xx",method="GET",route="/v1/sandboxes/{id}"}`, 2, 1e6},
		{`wrenn_lifecycle_operation_duration_seconds_count{kind="create",outcome="ok"}`, 1, 1},
		{`wrenn_lifecycle_operation_duration_seconds_sum{kind="create",outcome="ok"}`, 1e-9, 10},
		{`wrenn_lifecycle_operation_duration_seconds_count{kind="pause",outcome="ok"}`, 1, 1},
		{`wrenn_event_consumer_lag_seconds`, 0, 0},
		{`wrenn_event_consumer_lag_max_seconds`, 0.25, 0.25},
	} {
		v, ok := m[tc.series]
		if !ok {
			t.Errorf("series %s missing; have %v", tc.series, keysWith(m, "4xx"))
			continue
		}
		if v < tc.min || v > tc.max {
			t.Errorf("%s = %v, want in [%v, %v]", tc.series, v, tc.min, tc.max)
		}
	}
	for s := range m {
		if strings.Contains(s, sb.ID) {
			t.Errorf("a sandbox id became a label: %s", s)
		}
	}
	if _, ok := m[`wrenn_lifecycle_operation_duration_seconds_count{kind="destroy",outcome="ok"}`]; ok {
		t.Error("a destroy was counted that never ran")
	}
}

func keysWith(m map[string]float64, sub string) []string {
	var out []string
	for k := range m {
		if strings.Contains(k, sub) {
			out = append(out, k)
		}
	}
	return out
}

// With WRENN_METRICS_TOKEN set, /metrics needs it as a bearer token.
func TestMetricsToken(t *testing.T) {
	t.Parallel()
	const token = "scrape-0123456789abcdef"
	e := newEnv(t, func(_ *env, d *Deps) { d.MetricsToken = token })
	for _, c := range []struct {
		hdr  []string
		want int
	}{
		{nil, 401},
		{[]string{"Authorization", "Bearer wrong-0123456789abcdef"}, 401},
		{[]string{"Authorization", "Bearer " + token + "x"}, 401},
		{[]string{"Authorization", token}, 401},
		{[]string{"Authorization", "Bearer " + token}, 200},
	} {
		r := e.do("GET", "/metrics", "", nil, c.hdr...)
		if r.status != c.want {
			t.Errorf("%v: %d, want %d", c.hdr, r.status, c.want)
		}
		if c.want == 200 && !strings.Contains(string(r.body), "wrenn_http_request_duration_seconds") {
			t.Errorf("scrape lacks the request series")
		}
		if c.want == 401 && r.hdr.Get("WWW-Authenticate") == "" {
			t.Error("401 without WWW-Authenticate")
		}
	}
}

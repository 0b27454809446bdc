package api

import (
	"net/url"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/pkg/id"
)

func TestHostSandboxMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withRedis)
	teamID, key := e.team(false)
	_, tokA := e.hostWithToken("a")
	hostB, tokB := e.hostWithToken("b")
	// Placement takes the least-loaded host: make B the fuller one so the
	// API's sandbox lands on A.
	e.insertSandbox(teamID, hostB, "running")
	sid := e.create(key)
	post := func(token string, body any) resp {
		return e.do("POST", "/v1/hosts/sandbox-metrics", "", body, "Authorization", "Bearer "+token)
	}
	t0 := time.Now().UTC().Truncate(time.Second)
	sample := func(at time.Time, cpu float64) map[string]any {
		return map[string]any{"time": at, "cpu_percent": cpu, "memory_bytes": 5 << 20, "disk_bytes": 1 << 20}
	}
	flush := func(samples ...map[string]any) map[string]any {
		return map[string]any{"sandbox_id": sid, "samples": samples}
	}
	get := func() []hostclient.MetricSample {
		t.Helper()
		var m struct{ Samples []hostclient.MetricSample }
		r := e.do("GET", "/v1/sandboxes/"+sid+"/metrics", key, nil)
		if r.status != 200 {
			t.Fatalf("GET metrics: %d %s", r.status, r.body)
		}
		r.decode(t, &m)
		return m.Samples
	}

	t.Run("auth and validation", func(t *testing.T) {
		many := make([]map[string]any, maxFlushSamples+1)
		for i := range many {
			many[i] = sample(t0.Add(time.Duration(i)*time.Second), 1)
		}
		cases := []struct {
			name  string
			token string
			body  any
			want  int
		}{
			{"no token", "", flush(sample(t0, 1)), 401},
			{"bad token", "wrh_nope", flush(sample(t0, 1)), 401},
			{"other host's sandbox", tokB, flush(sample(t0, 1)), 404},
			{"unknown sandbox", tokA, map[string]any{"sandbox_id": id.New(id.Sandbox), "samples": []any{sample(t0, 1)}}, 404},
			{"bad sandbox id", tokA, map[string]any{"sandbox_id": "nope", "samples": []any{sample(t0, 1)}}, 400},
			{"no samples", tokA, flush(), 400},
			{"too many samples", tokA, flush(many...), 400},
			{"negative cpu", tokA, flush(sample(t0, -1)), 400},
			{"no time", tokA, flush(map[string]any{"cpu_percent": 1}), 400},
		}
		for _, c := range cases {
			if r := post(c.token, c.body); r.status != c.want {
				t.Errorf("%s: %d %s, want %d", c.name, r.status, r.body, c.want)
			}
		}
		if got := get(); len(got) != 1 {
			t.Errorf("refused flushes stored something: %d samples (want only the host's live one)", len(got))
		}
	})

	body := flush(sample(t0.Add(-30*time.Second), 1), sample(t0.Add(-20*time.Second), 2), sample(t0.Add(-10*time.Second), 3))
	var ans struct{ Stored int }
	r := post(tokA, body)
	if r.decode(t, &ans); r.status != 200 || ans.Stored != 3 {
		t.Fatalf("flush: %d %s, want 3 stored", r.status, r.body)
	}
	// A redelivery (its answer was lost) stores nothing twice.
	r = post(tokA, body)
	if r.decode(t, &ans); r.status != 200 || ans.Stored != 0 {
		t.Fatalf("redelivered flush: %d %s, want 0 stored", r.status, r.body)
	}

	// Running: the stored samples, then the host's after the last of them.
	calls := e.fake.Calls("SandboxMetrics")
	got := get()
	if len(got) < 4 || e.fake.Calls("SandboxMetrics") != calls+1 {
		t.Fatalf("running sandbox: %d samples, %d agent calls; want the 3 stored and the host's", len(got), e.fake.Calls("SandboxMetrics")-calls)
	}
	for i, want := range []float64{1, 2, 3} {
		if !got[i].Time.Equal(t0.Add(time.Duration(i-3)*10*time.Second)) || got[i].CPUPercent != want {
			t.Errorf("sample %d = %+v, want the stored one at %s with cpu %v", i, got[i], t0.Add(time.Duration(i-3)*10*time.Second), want)
		}
	}
	for i := 1; i < len(got); i++ {
		if !got[i].Time.After(got[i-1].Time) {
			t.Errorf("samples out of order or repeated at %d: %s after %s", i, got[i].Time, got[i-1].Time)
		}
	}

	// A range: since is exclusive, until inclusive.
	rng := func(q string) (int, []hostclient.MetricSample) {
		var m struct{ Samples []hostclient.MetricSample }
		r := e.do("GET", "/v1/sandboxes/"+sid+"/metrics?"+q, key, nil)
		if r.status == 200 {
			r.decode(t, &m)
		}
		return r.status, m.Samples
	}
	at := func(d time.Duration) string { return url.QueryEscape(t0.Add(d).Format(time.RFC3339Nano)) }
	if st, s := rng("since=" + at(-30*time.Second) + "&until=" + at(-10*time.Second)); st != 200 || len(s) != 2 || s[0].CPUPercent != 2 || s[1].CPUPercent != 3 {
		t.Errorf("range: %d %+v, want the samples with cpu 2 and 3", st, s)
	}
	if st, s := rng("until=" + at(-25*time.Second)); st != 200 || len(s) != 1 || s[0].CPUPercent != 1 {
		t.Errorf("until only: %d %+v", st, s)
	}
	for _, q := range []string{"until=yesterday", "since=" + at(0) + "&until=" + at(0), "since=" + at(0) + "&until=" + at(-time.Second)} {
		if st, _ := rng(q); st != 400 {
			t.Errorf("%s: %d, want 400", q, st)
		}
	}

	// Stopped: the stored history, without asking the host.
	e.do("DELETE", "/v1/sandboxes/"+sid, key, nil)
	e.waitStatus(key, sid, "stopped")
	calls = e.fake.Calls("SandboxMetrics")
	if got := get(); len(got) != 3 || e.fake.Calls("SandboxMetrics") != calls {
		t.Errorf("stopped sandbox: %d samples, %d agent calls; want the 3 stored and none", len(got), e.fake.Calls("SandboxMetrics")-calls)
	}
	// A destroyed sandbox's last flush arrives after it stopped; a day past
	// the newest sample, older ones go.
	if r := post(tokA, flush(sample(t0.Add(25*time.Hour), 4))); r.status != 200 {
		t.Fatalf("flush after stop: %d %s", r.status, r.body)
	}
	if got := get(); len(got) != 1 || got[0].CPUPercent != 4 {
		t.Errorf("after a flush a day later: %+v, want only the new sample", got)
	}
}

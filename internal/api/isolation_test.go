package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// isolationCase is how the tenant-isolation table calls one documented
// operation with team B's key: with a body (and query) that would be valid
// for the owner, so only ownership can refuse it.
type isolationCase struct {
	body  any    // JSON body, or a string sent raw
	query string // appended to the path
	// want overrides 404 where a route refuses every id alike before
	// looking it up (checked against a team that does not exist, so the
	// answer still says nothing about team A).
	want int
}

// isolationExempt lists operations that take no id of another team's
// resource, with why none can be reached through them. A new operation
// must land here or in the id table, or the test fails.
var isolationExempt = map[string]string{
	"GET /healthz":                   "public, no team data",
	"GET /metrics":                   "public, series carry route patterns, never ids (TestMetricsScrape)",
	"GET /openapi.yaml":              "public document",
	"POST /v1/hosts/register":        "authenticated by a one-time host registration token, not an API key",
	"POST /v1/hosts/refresh":         "authenticated by a host refresh token, not an API key",
	"POST /v1/hosts/heartbeat":       "authenticated by a host token, not an API key",
	"POST /v1/hosts/sandbox-events":  "authenticated by a host token, not an API key",
	"POST /v1/hosts/sandbox-metrics": "authenticated by a host token, not an API key",
	"POST /v1/auth/signup":           "public, creates a new user",
	"POST /v1/auth/login":            "public, answers the caller's own session",
	"POST /v1/auth/logout":           "ends the caller's own session",
	"POST /v1/auth/logout-all":       "ends the caller's own sessions",
	"POST /v1/sandboxes":             "creates in the caller's team",
	"POST /v1/teams":                 "creates a team owned by the caller",
	"POST /v1/api-keys":              "creates a key in the caller's team",
	"POST /v1/admin/hosts":           "admin only: checked for 403 below",
}

// Team B's key reaches nothing of team A's: every documented operation with
// a path parameter answers 404 for team A's resource (403 on admin routes,
// whose existence is public), never 2xx, and no answer of any list route
// carries one of team A's ids. The table is driven by openapi.yaml, so a
// new route fails this test until it is covered.
func TestTenantIsolationEveryRoute(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	teamA, keyA := e.team(false)
	teamB, keyB := e.team(false)
	hostID := e.host("h1")
	ctx := context.Background()
	var userA, keyIDA string
	must(t, e.pool.QueryRow(ctx, "SELECT user_id, id FROM api_keys WHERE team_id = $1", teamA).Scan(&userA, &keyIDA))

	// Real team-A resources: a running sandbox with a background process
	// and a file.
	sid := e.create(keyA)
	r := e.do("POST", "/v1/sandboxes/"+sid+"/exec", keyA, map[string]any{"cmd": "sleep 100", "background": true, "tag": "a"})
	var bg BackgroundProcess
	r.decode(t, &bg)
	if r.status != http.StatusAccepted || bg.PID == 0 {
		t.Fatalf("background exec: %d %s", r.status, r.body)
	}
	if r := e.do("PUT", "/v1/sandboxes/"+sid+"/files?path=/tmp/secret", keyA, "team A's secret"); r.status/100 != 2 {
		t.Fatalf("write file: %d %s", r.status, r.body)
	}
	secrets := []string{sid, teamA, userA, keyIDA, hostID, "team A's secret"}
	agentCalls := []string{"DestroySandbox", "PauseSandbox", "ResumeSandbox", "SignalProcess", "WriteFile", "Remove", "MakeDir", "SetSandboxTimeout", "PingSandbox", "Exec", "SendInput"}
	callsBefore := map[string]int{}
	for _, c := range agentCalls {
		callsBefore[c] = e.fake.Calls(c)
	}

	params := map[string]string{
		"/v1/sandboxes/{id}":   sid,
		"/v1/teams/{id}":       teamA,
		"/v1/api-keys/{id}":    keyIDA,
		"/v1/admin/hosts/{id}": hostID,
		"{pid}":                itoa(bg.PID),
		"{user_id}":            userA,
	}
	cases := map[string]isolationCase{
		"DELETE /v1/sandboxes/{id}":                     {},
		"GET /v1/sandboxes/{id}":                        {},
		"POST /v1/sandboxes/{id}/exec":                  {body: map[string]any{"cmd": "true"}},
		"POST /v1/sandboxes/{id}/pause":                 {},
		"POST /v1/sandboxes/{id}/resume":                {},
		"POST /v1/sandboxes/{id}/ping":                  {},
		"POST /v1/sandboxes/{id}/timeout":               {body: map[string]any{"timeout_sec": 60}},
		"GET /v1/sandboxes/{id}/exec/stream":            {},
		"GET /v1/sandboxes/{id}/processes":              {},
		"DELETE /v1/sandboxes/{id}/processes/{pid}":     {},
		"GET /v1/sandboxes/{id}/processes/{pid}/attach": {},
		"GET /v1/sandboxes/{id}/pty":                    {},
		"GET /v1/sandboxes/{id}/files":                  {query: "?path=/tmp/secret"},
		"PUT /v1/sandboxes/{id}/files":                  {query: "?path=/tmp/secret", body: "overwritten"},
		"DELETE /v1/sandboxes/{id}/files":               {query: "?path=/tmp/secret"},
		"GET /v1/sandboxes/{id}/files/list":             {query: "?path=/tmp"},
		"GET /v1/sandboxes/{id}/files/stat":             {query: "?path=/tmp/secret"},
		"POST /v1/sandboxes/{id}/files/mkdir":           {body: map[string]any{"path": "/tmp/d"}},
		"GET /v1/sandboxes/{id}/metrics":                {},
		"POST /v1/teams/{id}/switch":                    {want: http.StatusBadRequest}, // API keys never switch teams
		"GET /v1/teams/{id}/members":                    {},
		"POST /v1/teams/{id}/members":                   {body: map[string]any{"email": "b@example.com", "role": "member"}},
		"PATCH /v1/teams/{id}/members/{user_id}":        {body: map[string]any{"role": "member"}},
		"DELETE /v1/teams/{id}/members/{user_id}":       {},
		"DELETE /v1/api-keys/{id}":                      {},
		"DELETE /v1/admin/hosts/{id}":                   {query: "?force=true"},
	}

	var doc struct {
		Paths map[string]map[string]any `yaml:"paths"`
	}
	must(t, yaml.Unmarshal(OpenAPI, &doc))
	srv := httptest.NewServer(e.h)
	t.Cleanup(srv.Close)
	pathParam := regexp.MustCompile(`\{[a-z_]+\}`)
	covered := map[string]bool{}
	// Reads of lists run first: later calls with team A's ids land in
	// team B's own audit log, which is B's to see.
	for pass := 0; pass < 2; pass++ {
		for path, item := range doc.Paths {
			for method := range item {
				if method == "parameters" {
					continue
				}
				op := strings.ToUpper(method) + " " + path
				if _, ok := isolationExempt[op]; ok {
					if pass == 1 {
						continue
					}
					covered[op] = true
					if strings.HasPrefix(path, "/v1/admin/") {
						t.Run(op, func(t *testing.T) {
							if r := e.do(strings.ToUpper(method), path, keyB, map[string]any{"name": "b"}); r.status != http.StatusForbidden {
								t.Errorf("%d %s, want 403", r.status, r.body)
							}
						})
					}
					continue
				}
				if (pass == 0) == pathParam.MatchString(path) {
					continue
				}
				if !pathParam.MatchString(path) {
					// A list or caller-scoped route: only reads are called,
					// and they must show nothing of team A.
					if method != "get" {
						continue // reported as uncovered below
					}
					covered[op] = true
					t.Run(op, func(t *testing.T) {
						if op == "GET /v1/events" {
							return // a stream of the caller's team: TestEventStreamTeamScoped
						}
						r := e.do("GET", path, keyB, nil)
						if strings.HasPrefix(path, "/v1/admin/") {
							if r.status != http.StatusForbidden {
								t.Errorf("%d %s, want 403", r.status, r.body)
							}
							return
						}
						if r.status != http.StatusOK {
							t.Fatalf("%d %s", r.status, r.body)
						}
						for _, s := range secrets {
							if strings.Contains(string(r.body), s) {
								t.Errorf("team B sees %q: %s", s, r.body)
							}
						}
					})
					continue
				}
				c, ok := cases[op]
				if !ok {
					continue
				}
				covered[op] = true
				url := path
				for pat, v := range params {
					if strings.HasPrefix(pat, "/") {
						url = strings.Replace(url, pat, strings.Replace(pat, "{id}", v, 1), 1)
					} else {
						url = strings.ReplaceAll(url, pat, v)
					}
				}
				if pathParam.MatchString(url) {
					t.Errorf("%s: no team-A value for a parameter of %s", op, url)
					continue
				}
				url += c.query
				want := http.StatusNotFound
				if strings.HasPrefix(path, "/v1/admin/") {
					want = http.StatusForbidden
				}
				if c.want != 0 {
					want = c.want
					other := strings.ReplaceAll(url, teamA, "team-doesnotexist0000000")
					if r := e.do(strings.ToUpper(method), other, keyB, c.body); r.status != want {
						t.Errorf("%s: %d for a team that does not exist, %d expected for team A's: the answer tells them apart", op, r.status, want)
					}
				}
				t.Run(op, func(t *testing.T) {
					r := e.do(strings.ToUpper(method), url, keyB, c.body)
					if r.status != want {
						t.Errorf("%s with team B's key: %d %s, want %d", url, r.status, r.body, want)
					}
					for _, s := range secrets {
						if strings.Contains(string(r.body), s) && !strings.Contains(url, s) {
							t.Errorf("the answer leaks %q: %s", s, r.body)
						}
					}
					// WebSocket routes refuse the handshake the same way.
					if strings.HasSuffix(path, "/stream") || strings.HasSuffix(path, "/attach") || strings.HasSuffix(path, "/pty") {
						c, resp, err := wsDial(t, srv, url, keyB)
						if err == nil {
							c.CloseNow()
							t.Fatalf("WebSocket to team A's %s opened", url)
						}
						if resp == nil || resp.StatusCode != want {
							t.Errorf("WebSocket handshake: %v, want %d", resp, want)
						}
					}
				})
			}
		}
	}
	for path, item := range doc.Paths {
		for method := range item {
			if op := strings.ToUpper(method) + " " + path; method != "parameters" && !covered[op] {
				t.Errorf("%s is not covered by the tenant isolation table: add a case (with a team-A value for each parameter) or an exemption with its reason", op)
			}
		}
	}

	// Nothing of team A's changed and the agent never acted for team B.
	if got := e.waitStatus(keyA, sid, "running"); got.Status != "running" {
		t.Error("team A's sandbox changed")
	}
	r = e.do("GET", "/v1/sandboxes/"+sid+"/files?path=/tmp/secret", keyA, nil)
	if r.status != 200 || string(r.body) != "team A's secret" {
		t.Errorf("team A's file: %d %q", r.status, r.body)
	}
	var members struct {
		Members []Member `json:"members"`
	}
	e.do("GET", "/v1/teams/"+teamA+"/members", keyA, nil).decode(t, &members)
	if len(members.Members) != 1 || members.Members[0].UserID != userA || members.Members[0].Role != roleOwner {
		t.Errorf("team A's members changed: %+v", members.Members)
	}
	for _, call := range agentCalls {
		if n := e.fake.Calls(call) - callsBefore[call]; n != 0 {
			t.Errorf("the agent got %d %s calls for team B", n, call)
		}
	}
	var n int
	must(t, e.pool.QueryRow(ctx, "SELECT count(*) FROM team_members WHERE team_id = $1 OR user_id IN (SELECT user_id FROM team_members WHERE team_id = $2)", teamA, teamB).Scan(&n))
	if n != 2 {
		t.Errorf("%d memberships across teams A and B, want 2", n)
	}
}

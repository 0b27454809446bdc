package api

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/proxy"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/id"
)

// fakeAgent stands in for an agent's /proxy/ paths: it records what it was
// sent and answers as the test wants.
type fakeAgent struct {
	srv *httptest.Server

	mu   sync.Mutex
	seen []*http.Request
	// gone makes it answer like an agent that no longer has the sandbox.
	gone bool
}

func newFakeAgent(t *testing.T) *fakeAgent {
	f := &fakeAgent{}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAgent) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.seen = append(f.seen, r.Clone(context.Background()))
	gone := f.gone
	f.mu.Unlock()
	t, rest, err := proxy.ParsePath(r.URL.EscapedPath())
	switch {
	case err != nil:
		http.Error(w, "not a proxy path", http.StatusTeapot)
	case gone:
		w.Header().Set(proxy.ErrorHeader, "not_found")
		http.Error(w, "no such sandbox", http.StatusNotFound)
	case rest == "/redirect":
		// What the agent makes of an application's "/dir/".
		http.Redirect(w, r, t.Prefix()+"/dir/", http.StatusMovedPermanently)
	case rest == "/away":
		http.Redirect(w, r, "https://example.com/x", http.StatusFound)
	case rest == "/ws":
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprint(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		_, _ = io.Copy(conn, brw)
	default:
		fmt.Fprintf(w, "%s|%s|%s|%s|%s", r.URL.EscapedPath(), r.URL.RawQuery, r.Header.Get("X-API-Key"), r.Header.Get("Cookie"), r.Header.Get("X-Forwarded-Host"))
	}
}

func (f *fakeAgent) requests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.seen)
}

const testDomain = "sandbox.localhost"

// proxyEnv is an API with WRENN_DOMAIN served on a real listener (upgrades
// need one), a host whose address is the fake agent, and sandboxes on it.
type proxyEnv struct {
	*env
	agent *fakeAgent
	srv   *httptest.Server
	team  string
	key   string
	host  string
}

func newProxyEnv(t *testing.T) *proxyEnv {
	e := newEnv(t, func(_ *env, d *Deps) { d.Domain = testDomain })
	p := &proxyEnv{env: e, agent: newFakeAgent(t)}
	p.team, p.key = e.team(false)
	p.host = e.host("proxy-" + id.Secret(4))
	_, err := e.pool.Exec(context.Background(), `UPDATE hosts SET address = $1 WHERE id = $2`, p.agent.srv.URL, p.host)
	must(t, err)
	p.srv = httptest.NewServer(e.h)
	t.Cleanup(p.srv.Close)
	return p
}

// sandbox inserts a sandbox in status; only tests write statuses this way.
func (p *proxyEnv) sandbox(status string) string {
	p.t.Helper()
	sid := id.New(id.Sandbox)
	_, err := p.q.InsertSandbox(context.Background(), db.InsertSandboxParams{ID: sid, TeamID: p.team, HostID: p.host, Template: "minimal", Vcpus: 1, MemoryMb: 256, TimeoutSec: 300})
	must(p.t, err)
	_, err = p.pool.Exec(context.Background(), `UPDATE sandboxes SET status = $1 WHERE id = $2`, status, sid)
	must(p.t, err)
	return sid
}

func (p *proxyEnv) get(path string, hdrs ...string) (*http.Response, string) {
	p.t.Helper()
	req, err := http.NewRequest(http.MethodGet, p.srv.URL+path, nil)
	must(p.t, err)
	for i := 0; i+1 < len(hdrs); i += 2 {
		if hdrs[i] == "Host" {
			req.Host = hdrs[i+1]
			continue
		}
		req.Header.Add(hdrs[i], hdrs[i+1])
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	must(p.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	must(p.t, err)
	return resp, string(b)
}

func TestPortProxyRouting(t *testing.T) {
	t.Parallel()
	p := newProxyEnv(t)
	sid := p.sandbox("running")
	host := "8080-" + sid + "." + testDomain
	tests := []struct {
		name string
		path string
		hdrs []string
		want string
	}{
		{"header pair", "/a/b/?q=1", []string{"E2b-Sandbox-Id", sid, "E2b-Sandbox-Port", "8080"},
			"/proxy/" + sid + "/8080/a/b/|q=1|||127.0.0.1"},
		{"subdomain", "/a/b/?q=1", []string{"Host", host},
			"/proxy/" + sid + "/8080/a/b/|q=1|||" + host},
		{"subdomain with port and upper case", "/", []string{"Host", strings.ToUpper(host) + ":443"},
			"/proxy/" + sid + "/8080/||||" + strings.ToUpper(host) + ":443"},
		{"escapes and dot segments pass as sent", "/x%2Fy/../z", []string{"Host", host},
			"/proxy/" + sid + "/8080/x%2Fy/../z||||" + host},
		{"credentials are not forwarded", "/", []string{"Host", host, "X-API-Key", "wrn_secret", "Cookie", "wrenn_session=s; app=1; wrenn_csrf=c"},
			"/proxy/" + sid + "/8080/|||app=1|" + host},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path
			resp, body := p.rawGet(t, path, tc.hdrs...)
			want := tc.want
			if strings.HasPrefix(tc.name, "header pair") {
				// X-Forwarded-Host is the host the client used.
				want = strings.TrimSuffix(want, "127.0.0.1") + strings.TrimPrefix(p.srv.URL, "http://")
			}
			if resp.StatusCode != http.StatusOK || body != want {
				t.Fatalf("status %d body %q, want %q", resp.StatusCode, body, want)
			}
		})
	}
	t.Run("API hosts stay the API", func(t *testing.T) {
		if resp, _ := p.get("/healthz", "Host", "api."+testDomain+".example"); resp.StatusCode != http.StatusOK {
			t.Fatalf("healthz %d", resp.StatusCode)
		}
	})
}

// rawGet sends the path exactly as given (no client-side cleaning).
func (p *proxyEnv) rawGet(t *testing.T, path string, hdrs ...string) (*http.Response, string) {
	t.Helper()
	conn, err := net.Dial("tcp", p.srv.Listener.Addr().String())
	must(t, err)
	defer conn.Close()
	host := p.srv.Listener.Addr().String()
	var extra strings.Builder
	for i := 0; i+1 < len(hdrs); i += 2 {
		if hdrs[i] == "Host" {
			host = hdrs[i+1]
			continue
		}
		fmt.Fprintf(&extra, "%s: %s\r\n", hdrs[i], hdrs[i+1])
	}
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n", path, host, extra.String())
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	must(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	must(t, err)
	return resp, string(b)
}

func TestPortProxyRefusals(t *testing.T) {
	t.Parallel()
	p := newProxyEnv(t)
	running := p.sandbox("running")
	paused := p.sandbox("paused")
	tests := []struct {
		name     string
		hdrs     []string
		want     int
		wantCode string
	}{
		{"unknown sandbox", []string{"Host", "80-" + id.New(id.Sandbox) + "." + testDomain}, http.StatusNotFound, CodeNotFound},
		{"paused sandbox", []string{"E2b-Sandbox-Id", paused, "E2b-Sandbox-Port", "80"}, http.StatusConflict, CodeConflict},
		{"bad port header", []string{"E2b-Sandbox-Id", running, "E2b-Sandbox-Port", "0"}, http.StatusBadRequest, CodeInvalidArgument},
		{"only one header", []string{"E2b-Sandbox-Id", running}, http.StatusBadRequest, CodeInvalidArgument},
		{"malformed host under the domain", []string{"Host", "www." + testDomain}, http.StatusBadRequest, CodeInvalidArgument},
		{"bad port in host", []string{"Host", "99999-" + running + "." + testDomain}, http.StatusBadRequest, CodeInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := p.get("/", tc.hdrs...)
			r := resp2(resp, body)
			if code, msg := r.errCode(t); resp.StatusCode != tc.want || code != tc.wantCode || msg == "" {
				t.Fatalf("status %d body %s, want %d %s", resp.StatusCode, body, tc.want, tc.wantCode)
			}
		})
	}
	if n := p.agent.requests(); n != 0 {
		t.Fatalf("refused requests reached the agent %d times", n)
	}
}

func resp2(r *http.Response, body string) resp {
	return resp{status: r.StatusCode, body: []byte(body), hdr: r.Header}
}

func TestPortProxyLocationAndCache(t *testing.T) {
	t.Parallel()
	p := newProxyEnv(t)
	sid := p.sandbox("running")
	host := "3000-" + sid + "." + testDomain
	resp, _ := p.get("/redirect", "Host", host)
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/dir/" {
		t.Fatalf("redirect %d to %q, want /dir/ with the prefix stripped", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, _ = p.get("/away", "Host", host)
	if resp.Header.Get("Location") != "https://example.com/x" {
		t.Fatalf("external redirect changed to %q", resp.Header.Get("Location"))
	}
	if n := p.api.portRoutes.len(); n != 1 {
		t.Fatalf("%d cached routes, want 1", n)
	}
	// The database is not asked again while the route is cached: a status
	// changed behind the cache's back is still routed, and the agent (the
	// authority) refuses; its refusal evicts the route.
	_, err := p.pool.Exec(context.Background(), `UPDATE sandboxes SET status = 'stopped' WHERE id = $1`, sid)
	must(t, err)
	p.agent.mu.Lock()
	p.agent.gone = true
	p.agent.mu.Unlock()
	if resp, _ := p.get("/", "Host", host); resp.StatusCode != http.StatusNotFound || resp.Header.Get(proxy.ErrorHeader) != "not_found" {
		t.Fatalf("agent refusal came back as %d", resp.StatusCode)
	}
	if n := p.api.portRoutes.len(); n != 0 {
		t.Fatalf("route kept after the agent said the sandbox is gone")
	}
	before := p.agent.requests()
	if resp, _ := p.get("/", "Host", host); resp.StatusCode != http.StatusNotFound || p.agent.requests() != before {
		t.Fatalf("destroyed sandbox: %d, agent asked %d times more", resp.StatusCode, p.agent.requests()-before)
	}

	// Routes expire on the injected clock.
	other := p.sandbox("running")
	if resp, _ := p.get("/", "E2b-Sandbox-Id", other, "E2b-Sandbox-Port", "1"); resp.StatusCode != http.StatusNotFound {
		// The fake agent is still "gone"; any answer from it will do.
		t.Logf("status %d", resp.StatusCode)
	}
	p.agent.mu.Lock()
	p.agent.gone = false
	p.agent.mu.Unlock()
	if resp, _ := p.get("/", "E2b-Sandbox-Id", other, "E2b-Sandbox-Port", "1"); resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if _, ok := p.api.portRoutes.get(other, p.clock.Now()); !ok {
		t.Fatal("route not cached")
	}
	p.clock.Add(portRouteTTL + time.Second)
	if _, ok := p.api.portRoutes.get(other, p.clock.Now()); ok {
		t.Fatal("route outlived its TTL")
	}
}

// A WebSocket-style upgrade passes through the control plane's proxy to the
// agent and back, in both directions.
func TestPortProxyUpgradePassesThrough(t *testing.T) {
	t.Parallel()
	p := newProxyEnv(t)
	sid := p.sandbox("running")
	conn, err := net.Dial("tcp", p.srv.Listener.Addr().String())
	must(t, err)
	defer conn.Close()
	fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: 8000-%s.%s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", sid, testDomain)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	must(t, err)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	msg := strings.Repeat("ping", 50000)
	if _, err := io.WriteString(conn, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != msg {
		t.Fatalf("echo: %v", err)
	}
}

// A sandbox created private answers port traffic only with its traffic
// token, which the sandbox's application never sees; a public one needs none
// and gets no token.
func TestPortProxyPrivateSandbox(t *testing.T) {
	t.Parallel()
	p := newProxyEnv(t)
	var created struct {
		ID           string `json:"id"`
		TrafficToken string `json:"traffic_token"`
	}
	r := p.do("POST", "/v1/sandboxes", p.key, map[string]any{"template": "minimal", "private": true})
	if r.status != http.StatusAccepted {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	r.decode(t, &created)
	if !strings.HasPrefix(created.TrafficToken, "wrt_") {
		t.Fatalf("private create answered no traffic token: %s", r.body)
	}
	p.waitStatus(p.key, created.ID, "running")
	var public struct {
		ID           string  `json:"id"`
		TrafficToken *string `json:"traffic_token"`
	}
	r = p.do("POST", "/v1/sandboxes", p.key, map[string]any{"template": "minimal"})
	r.decode(t, &public)
	if public.TrafficToken != nil {
		t.Fatalf("public create answered a traffic token: %s", r.body)
	}
	p.waitStatus(p.key, public.ID, "running")

	host := "8080-" + created.ID + "." + testDomain
	tests := []struct {
		name string
		hdrs []string
		want int
	}{
		{"no token", []string{"Host", host}, http.StatusUnauthorized},
		{"wrong token", []string{"Host", host, TrafficTokenHeader, "wrt_" + strings.Repeat("0", 32)}, http.StatusUnauthorized},
		{"API key is not a token", []string{"Host", host, "X-API-Key", p.key}, http.StatusUnauthorized},
		{"token", []string{"Host", host, TrafficTokenHeader, created.TrafficToken}, http.StatusOK},
		{"token with the header pair", []string{"E2b-Sandbox-Id", created.ID, "E2b-Sandbox-Port", "8080", TrafficTokenHeader, created.TrafficToken}, http.StatusOK},
		{"public needs none", []string{"Host", "8080-" + public.ID + "." + testDomain}, http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := p.agent.requests()
			resp, body := p.get("/", tc.hdrs...)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
			reached := p.agent.requests() - before
			if (tc.want == http.StatusOK) != (reached == 1) {
				t.Fatalf("agent reached %d times", reached)
			}
			if reached == 1 {
				p.agent.mu.Lock()
				last := p.agent.seen[len(p.agent.seen)-1]
				p.agent.mu.Unlock()
				if last.Header.Get(TrafficTokenHeader) != "" {
					t.Fatal("the traffic token was forwarded to the sandbox")
				}
			}
		})
	}
}

package api

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/wrenn/wrenn/internal/proxy"
	"github.com/wrenn/wrenn/pkg/auth"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/id"
)

// portRouteTTL bounds how long a sandbox's agent address is trusted without
// asking the database again. The agent is the authority on whether the
// sandbox still runs: it answers 404/409 itself, and such an answer drops
// the route at once, so the TTL only limits how long a moved or deleted
// host is remembered.
const portRouteTTL = 10 * time.Second

// portRoute is where a sandbox's port traffic goes.
type portRoute struct {
	agent *url.URL
	// tokenHash is the SHA-256 of a private sandbox's traffic token; empty
	// for a public sandbox.
	tokenHash string
	expires   time.Time
}

// TrafficTokenHeader carries a private sandbox's traffic token on its port
// traffic.
const TrafficTokenHeader = "X-Wrenn-Traffic-Token"

// newTrafficToken makes sandboxID private: it stores a new token's hash and
// returns the token.
func (a *API) newTrafficToken(ctx context.Context, sandboxID string) (string, error) {
	token := "wrt_" + id.Secret(16)
	if err := a.q.InsertTrafficToken(ctx, db.InsertTrafficTokenParams{SandboxID: sandboxID, TokenHash: hashSecret(token)}); err != nil {
		return "", fmt.Errorf("store traffic token of %s: %w", sandboxID, err)
	}
	return token, nil
}

// portRoutes caches routes by sandbox id.
type portRoutes struct {
	mu sync.Mutex
	m  map[string]portRoute
}

func (c *portRoutes) get(sandboxID string, now time.Time) (portRoute, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.m[sandboxID]
	if ok && now.After(r.expires) {
		delete(c.m, sandboxID)
		return portRoute{}, false
	}
	return r, ok
}

func (c *portRoutes) put(sandboxID string, r portRoute) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]portRoute{}
	}
	// Expired entries of sandboxes nobody asks for any more go here, so
	// the map does not grow with every sandbox ever proxied.
	if len(c.m) >= 4096 {
		for k, v := range c.m {
			if r.expires.Sub(v.expires) > portRouteTTL {
				delete(c.m, k)
			}
		}
	}
	c.m[sandboxID] = r
}

func (c *portRoutes) evict(sandboxID string) {
	c.mu.Lock()
	delete(c.m, sandboxID)
	c.mu.Unlock()
}

func (c *portRoutes) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

type portTargetKey struct{}

// portCopyBuffers are the port proxy's copy buffers.
var portCopyBuffers = &proxy.BufferPool{}

// portProxy routes port traffic before the API's routes: a Host of
// {port}-{sandbox_id}.{WRENN_DOMAIN}, or the E2b-Sandbox-Id and
// E2b-Sandbox-Port header pair on any host, goes to the sandbox's agent at
// /proxy/{id}/{port} followed by the original path, by string
// concatenation so trailing slashes, dot segments and escapes reach the
// application as sent. Everything else is the API's.
//
// Sandboxes are public by default: anyone who knows the id reaches their
// ports, as with E2B. A private one needs its traffic token. The caller's API
// key, dashboard cookies and traffic token are not forwarded.
func (a *API) portProxy(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t, ok, err := a.portTarget(r)
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		if err != nil {
			a.fail(w, r, &Error{Status: http.StatusBadRequest, Code: CodeInvalidArgument, Message: err.Error()})
			return
		}
		if !strings.HasPrefix(r.URL.EscapedPath(), "/") {
			a.fail(w, r, invalid("path", "%q is not an absolute path", r.URL.EscapedPath()))
			return
		}
		route, err := a.portRoute(r.Context(), t.SandboxID)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		if route.tokenHash != "" {
			got := hashSecret(r.Header.Get(TrafficTokenHeader))
			if subtle.ConstantTimeCompare([]byte(got), []byte(route.tokenHash)) != 1 {
				a.fail(w, r, unauthorized(fmt.Sprintf("sandbox %s is private: send the traffic_token of its create answer in %s", t.SandboxID, TrafficTokenHeader)))
				return
			}
		}
		ctx := context.WithValue(r.Context(), portTargetKey{}, portHop{t: t, agent: route.agent})
		a.portRP.ServeHTTP(w, r.WithContext(ctx))
	})
}

// portHop is what the shared reverse proxy needs about one request.
type portHop struct {
	t     proxy.Target
	agent *url.URL
}

// portTarget reads the sandbox port a request is for. ok is false for API
// requests; err is set for port requests that name no valid port.
func (a *API) portTarget(r *http.Request) (t proxy.Target, ok bool, err error) {
	sid, port := r.Header.Get(proxy.HeaderSandboxID), r.Header.Get(proxy.HeaderSandboxPort)
	if sid != "" || port != "" {
		t, err = proxy.ParseTarget(sid, port)
		if err != nil {
			err = fmt.Errorf("headers %s and %s: %w", proxy.HeaderSandboxID, proxy.HeaderSandboxPort, err)
		}
		return t, true, err
	}
	t, err = proxy.ParseHost(r.Host, a.d.Domain)
	if errors.Is(err, proxy.ErrNotSandboxHost) {
		return t, false, nil
	}
	return t, true, err
}

// portRoute finds the agent of a running sandbox, from the cache or the
// database. A sandbox that does not exist or was destroyed is 404; one that
// exists but does not run now (paused, starting, ...) is 409 with its
// status, so users know to resume it or wait.
func (a *API) portRoute(ctx context.Context, sandboxID string) (portRoute, error) {
	now := a.d.Now()
	if r, ok := a.portRoutes.get(sandboxID, now); ok {
		return r, nil
	}
	row, err := a.q.GetPortRoute(ctx, sandboxID)
	status, address, tokenHash := row.Status, row.Address, row.TokenHash
	switch {
	case errors.Is(err, pgx.ErrNoRows), err == nil && (status == "stopped" || status == "error"):
		// A destroyed sandbox's row stays for the record; its ports are
		// gone for good.
		return portRoute{}, notFound("sandbox", sandboxID)
	case err != nil:
		return portRoute{}, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "could not look up the sandbox; retry in a moment", Cause: fmt.Errorf("look up port route of %s: %w", sandboxID, err)}
	case status != "running":
		return portRoute{}, conflict(fmt.Sprintf("sandbox %s is %s; its ports answer only while it is running", sandboxID, status))
	}
	u, err := url.Parse(address)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return portRoute{}, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "the sandbox's host has no usable address", Cause: fmt.Errorf("host address %q of %s: %v", address, sandboxID, err)}
	}
	r := portRoute{agent: u, expires: now.Add(portRouteTTL)}
	if tokenHash != nil {
		r.tokenHash = *tokenHash
	}
	a.portRoutes.put(sandboxID, r)
	return r, nil
}

// newPortReverseProxy is the one reverse proxy of port traffic; each
// request carries its target in its context.
func (a *API) newPortReverseProxy(transport http.RoundTripper) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Transport: transport,
		// Streaming responses are flushed write by write regardless;
		// downloads of known length are not (see the agent's proxy).
		BufferPool: portCopyBuffers,
		Rewrite: func(pr *httputil.ProxyRequest) {
			hop := pr.In.Context().Value(portTargetKey{}).(portHop)
			prefix := hop.t.Prefix()
			pr.Out.URL = &url.URL{
				Scheme:   hop.agent.Scheme,
				Host:     hop.agent.Host,
				Path:     prefix + pr.In.URL.Path,
				RawPath:  prefix + pr.In.URL.EscapedPath(),
				RawQuery: pr.In.URL.RawQuery,
			}
			pr.Out.Host = ""
			pr.SetXForwarded()
			// The sandbox is someone else's code: it gets no credential
			// of the caller's Wrenn account.
			pr.Out.Header.Del("X-API-Key")
			pr.Out.Header.Del(TrafficTokenHeader)
			stripCookies(pr.Out.Header, auth.SessionCookie, auth.CSRFCookie)
		},
		ModifyResponse: func(resp *http.Response) error {
			hop := resp.Request.Context().Value(portTargetKey{}).(portHop)
			if loc := resp.Header.Get("Location"); loc != "" {
				resp.Header.Set("Location", proxy.StripLocation(loc, hop.t))
			}
			switch resp.Header.Get(proxy.ErrorHeader) {
			case "not_found", "conflict":
				// The agent no longer runs the sandbox: ask the
				// database next time.
				a.portRoutes.evict(hop.t.SandboxID)
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			hop := r.Context().Value(portTargetKey{}).(portHop)
			a.portRoutes.evict(hop.t.SandboxID)
			if r.Context().Err() != nil {
				return
			}
			a.fail(w, r, &Error{Status: http.StatusBadGateway, Code: CodeUnavailable, Message: fmt.Sprintf("the host of sandbox %s did not answer; retry in a moment", hop.t.SandboxID), Cause: err})
		},
	}
}

// stripCookies removes the named cookies from a request's Cookie headers.
func stripCookies(h http.Header, names ...string) {
	lines := h.Values("Cookie")
	if len(lines) == 0 {
		return
	}
	var kept []string
	for _, line := range lines {
		for _, part := range strings.Split(line, ";") {
			name, _, _ := strings.Cut(strings.TrimSpace(part), "=")
			drop := false
			for _, n := range names {
				drop = drop || name == n
			}
			if !drop && strings.TrimSpace(part) != "" {
				kept = append(kept, strings.TrimSpace(part))
			}
		}
	}
	h.Del("Cookie")
	if len(kept) > 0 {
		h.Set("Cookie", strings.Join(kept, "; "))
	}
}

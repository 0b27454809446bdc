package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/wrenn/wrenn/internal/proxy"
)

// Dial retry for ports that just opened: a server started a moment before
// the first request still refuses for a few hundred milliseconds. Attempts
// are linear: wait dialRetryStep, then 2×dialRetryStep.
const (
	dialAttempts  = 3
	dialRetryStep = 150 * time.Millisecond
)

// copyBuffers are the port proxy's copy buffers.
var copyBuffers = &proxy.BufferPool{}

// PortProxy serves /proxy/{sandbox_id}/{port}/{path} on the agent: HTTP and
// WebSocket traffic to a TCP port of a running sandbox, reached at its guest
// address. It keeps one ReverseProxy per sandbox, port and guest address, and
// drops a sandbox's entries when the manager removes the sandbox (the hook is
// registered by NewPortProxy), so the cache never outlives what it points at.
type PortProxy struct {
	m         *Manager
	log       *slog.Logger
	transport *http.Transport

	// proxies maps proxyKey to *proxyEntry.
	proxies sync.Map
}

type proxyKey struct {
	sandboxID string
	port      int
	guest     string
}

// proxyEntry is a cached reverse proxy and the table entry it was made for;
// a different *Sandbox under the same id (destroyed, created again) gets a
// fresh entry.
type proxyEntry struct {
	sb *Sandbox
	rp *httputil.ReverseProxy
}

// NewPortProxy returns the port proxy of m's sandboxes and registers its
// eviction with m. dial, when non-nil, replaces the TCP dialer (tests route
// guest addresses to loopback servers with it); it is still retried.
func NewPortProxy(m *Manager, log *slog.Logger, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *PortProxy {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if dial == nil {
		dial = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	p := &PortProxy{m: m, log: log, transport: newProxyTransport(retryDial(dial, dialAttempts, dialRetryStep))}
	m.OnRemove(p.Evict)
	return p
}

// newProxyTransport is the port proxy's own transport: HTTP/1.1 only (a
// WebSocket upgrade needs it, and one slow port must not stall others on a
// shared connection), pooled per guest address and port, with compression
// left to the two ends so bytes pass unchanged. It has no response timeout:
// long polls and server-sent events are normal port traffic.
func newProxyTransport(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Transport {
	t := &http.Transport{
		Proxy:                 nil,
		DialContext:           dial,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		WriteBufferSize:       64 << 10,
		ReadBufferSize:        64 << 10,
	}
	t.Protocols = new(http.Protocols)
	t.Protocols.SetHTTP1(true)
	return t
}

// retryDial dials up to attempts times while the port refuses connections,
// waiting step, 2×step, ... in between. Other failures (a timeout, no route)
// are not retried: they do not go away in milliseconds.
func retryDial(dial func(ctx context.Context, network, addr string) (net.Conn, error), attempts int, step time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		for i := 1; ; i++ {
			c, err := dial(ctx, network, addr)
			if err == nil || i >= attempts || !errors.Is(err, syscall.ECONNREFUSED) {
				return c, err
			}
			t := time.NewTimer(time.Duration(i) * step)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, err
			case <-t.C:
			}
		}
	}
}

// Handler serves the proxy's paths itself and everything else with next.
// The proxy must come before a ServeMux: the mux cleans paths, and a cleaned
// "/proxy/A/80/../../B/80/" would reach sandbox B.
func (p *PortProxy) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.URL.Path) >= len(proxy.PathPrefix) && r.URL.Path[:len(proxy.PathPrefix)] == proxy.PathPrefix {
			p.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// ServeHTTP proxies one request. Unknown sandbox → 404, a sandbox that is
// not running → 409, a malformed path or port → 400, all as
// {"error":{"code","message"}}; a port nothing listens on → 502.
func (p *PortProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t, rest, err := proxy.ParsePath(r.URL.EscapedPath())
	if err != nil {
		writeProxyError(w, http.StatusBadRequest, "invalid_argument", err.Error())
		return
	}
	if rest == "" {
		// Without the slash, the page's relative links would resolve
		// outside the port's prefix.
		loc := t.Prefix() + "/"
		if r.URL.RawQuery != "" {
			loc += "?" + r.URL.RawQuery
		}
		http.Redirect(w, r, loc, http.StatusPermanentRedirect)
		return
	}
	sb, err := p.m.get(t.SandboxID)
	if err != nil {
		writeProxyError(w, http.StatusNotFound, "not_found", err.Error())
		return
	}
	// begin checks the state under the sandbox's lock and records the
	// request as activity. The request is not held as busy: an open
	// WebSocket or event stream with no traffic is idle, and must not keep
	// a sandbox from pausing forever. Traffic touches it as bytes flow.
	if sb.creating.Load() {
		writeProxyError(w, http.StatusConflict, "conflict", fmt.Sprintf("sandbox %s is still starting; retry in a moment", sb.ID))
		return
	}
	_, done, err := p.m.begin(sb)
	switch {
	case errors.Is(err, ErrNotFound):
		writeProxyError(w, http.StatusNotFound, "not_found", err.Error())
		return
	case err != nil:
		writeProxyError(w, http.StatusConflict, "conflict", err.Error()+"; resume it to reach its ports")
		return
	}
	done()
	p.entry(sb, t).rp.ServeHTTP(w, r)
	p.m.touch(sb)
}

// entry returns the cached reverse proxy for sb's port, making it on first
// use.
func (p *PortProxy) entry(sb *Sandbox, t proxy.Target) *proxyEntry {
	guest := sb.Link.GuestIP.String()
	key := proxyKey{sandboxID: sb.ID, port: t.Port, guest: guest}
	if v, ok := p.proxies.Load(key); ok {
		if e := v.(*proxyEntry); e.sb == sb {
			return e
		}
	}
	e := &proxyEntry{sb: sb, rp: p.newReverseProxy(sb, t, guest)}
	p.proxies.Store(key, e)
	return e
}

func (p *PortProxy) newReverseProxy(sb *Sandbox, t proxy.Target, guest string) *httputil.ReverseProxy {
	hostport := net.JoinHostPort(guest, strconv.Itoa(t.Port))
	touch := func() { p.m.touch(sb) }
	log := p.log.With("sandbox_id", sb.ID, "port", t.Port)
	return &httputil.ReverseProxy{
		Transport: p.transport,
		// FlushInterval 0: ReverseProxy still flushes every write of a
		// streaming response (unknown length, event streams), while a
		// download of known length is not flushed write by write, which
		// cost about a third of its throughput.
		BufferPool: copyBuffers,
		Rewrite: func(pr *httputil.ProxyRequest) {
			_, rest, _ := proxy.ParsePath(pr.In.URL.EscapedPath())
			path, err := url.PathUnescape(rest)
			if err != nil {
				path = rest
			}
			pr.Out.URL = &url.URL{Scheme: "http", Host: hostport, Path: path, RawPath: rest, RawQuery: pr.In.URL.RawQuery}
			pr.Out.Host = ""
			// The control plane in front forwarded the user's host and
			// scheme; keep them, and add this hop to X-Forwarded-For.
			fwdFor, fwdHost, fwdProto := pr.In.Header["X-Forwarded-For"], pr.In.Header.Get("X-Forwarded-Host"), pr.In.Header.Get("X-Forwarded-Proto")
			if fwdFor != nil {
				pr.Out.Header["X-Forwarded-For"] = fwdFor
			}
			pr.SetXForwarded()
			if fwdHost != "" {
				pr.Out.Header.Set("X-Forwarded-Host", fwdHost)
			}
			if fwdProto != "" {
				pr.Out.Header.Set("X-Forwarded-Proto", fwdProto)
			}
			if pr.Out.Body != nil && pr.Out.Body != http.NoBody {
				pr.Out.Body = &activityBody{ReadCloser: pr.Out.Body, touch: touch}
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			if loc := resp.Header.Get("Location"); loc != "" {
				resp.Header.Set("Location", proxy.RewriteLocation(loc, t, guest))
			}
			if rwc, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
				// ReverseProxy tunnels an upgraded connection only if
				// the body stays a ReadWriteCloser.
				resp.Body = &activityConn{ReadWriteCloser: rwc, touch: touch}
			} else if resp.Body != nil {
				resp.Body = &activityBody{ReadCloser: resp.Body, touch: touch}
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				// The client went away; there is no one to answer.
				return
			}
			log.Debug("proxy to sandbox port failed", "err", err)
			writeProxyError(w, http.StatusBadGateway, "unavailable", fmt.Sprintf("nothing answered on port %d of sandbox %s: is a server listening on it?", t.Port, sb.ID))
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// Evict drops every cached proxy of a sandbox and closes idle connections:
// a later sandbox may get the same guest address, and must not be sent
// requests over a connection to its predecessor.
func (p *PortProxy) Evict(sandboxID string) {
	evicted := false
	p.proxies.Range(func(k, _ any) bool {
		if k.(proxyKey).sandboxID == sandboxID {
			p.proxies.Delete(k)
			evicted = true
		}
		return true
	})
	if evicted {
		p.transport.CloseIdleConnections()
	}
}

// cached counts the cached proxies of a sandbox (tests).
func (p *PortProxy) cached(sandboxID string) int {
	n := 0
	p.proxies.Range(func(k, _ any) bool {
		if k.(proxyKey).sandboxID == sandboxID {
			n++
		}
		return true
	})
	return n
}

// Close releases the proxy's idle connections.
func (p *PortProxy) Close() { p.transport.CloseIdleConnections() }

// activityBody records activity whenever bytes of a proxied body pass.
type activityBody struct {
	io.ReadCloser
	touch func()
}

func (b *activityBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.touch()
	}
	return n, err
}

// activityConn is activityBody for an upgraded (WebSocket) connection, in
// both directions.
type activityConn struct {
	io.ReadWriteCloser
	touch func()
}

func (c *activityConn) Read(p []byte) (int, error) {
	n, err := c.ReadWriteCloser.Read(p)
	if n > 0 {
		c.touch()
	}
	return n, err
}

func (c *activityConn) Write(p []byte) (int, error) {
	n, err := c.ReadWriteCloser.Write(p)
	if n > 0 {
		c.touch()
	}
	return n, err
}

func writeProxyError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set(proxy.ErrorHeader, code)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

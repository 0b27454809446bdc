package agent

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// proxyRig is a manager with fakes, the port proxy in front of a mux as in
// Run, and a dialer that sends every guest address to loopback, keeping the
// port: a test server on 127.0.0.1:P is port P of every sandbox.
type proxyRig struct {
	*rig
	p   *PortProxy
	srv *httptest.Server
}

func newProxyRig(t *testing.T) *proxyRig {
	t.Helper()
	r := newRig(t, nil)
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		var d net.Dialer
		return d.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
	}
	p := NewPortProxy(r.m, nil, dial)
	t.Cleanup(p.Close)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {})
	srv := httptest.NewServer(p.Handler(mux))
	t.Cleanup(srv.Close)
	return &proxyRig{rig: r, p: p, srv: srv}
}

func (r *proxyRig) create(t *testing.T) string {
	t.Helper()
	sid := newID()
	if _, err := r.m.Create(context.Background(), createReq(sid, time.Minute)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.m.Destroy(context.Background(), sid) })
	return sid
}

// client never follows redirects unless told to, and has its own transport.
func testClient(t *testing.T, follow bool) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	if !follow {
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	return c
}

func portOf(t *testing.T, s *httptest.Server) int {
	t.Helper()
	_, p, _ := net.SplitHostPort(s.Listener.Addr().String())
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func get(t *testing.T, c *http.Client, url string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp, string(b)
}

func TestPortProxyRefusals(t *testing.T) {
	t.Parallel()
	r := newProxyRig(t)
	running := r.create(t)
	paused := r.create(t)
	if _, err := r.m.Pause(context.Background(), paused); err != nil {
		t.Fatal(err)
	}
	closed := freePort(t)
	c := testClient(t, false)
	tests := []struct {
		name     string
		path     string
		want     int
		wantCode string
	}{
		{"port zero", "/proxy/" + running + "/0/", http.StatusBadRequest, "invalid_argument"},
		{"port too big", "/proxy/" + running + "/70000/", http.StatusBadRequest, "invalid_argument"},
		{"port not a number", "/proxy/" + running + "/http/", http.StatusBadRequest, "invalid_argument"},
		{"not a sandbox id", "/proxy/nope/80/", http.StatusBadRequest, "invalid_argument"},
		{"unknown sandbox", "/proxy/" + newID() + "/80/", http.StatusNotFound, "not_found"},
		{"paused sandbox", "/proxy/" + paused + "/80/", http.StatusConflict, "conflict"},
		{"nothing listening", fmt.Sprintf("/proxy/%s/%d/", running, closed), http.StatusBadGateway, "unavailable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(t, c, r.srv.URL+tc.path)
			var e struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			if resp.StatusCode != tc.want || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("status %d %s, want %d JSON: %s", resp.StatusCode, resp.Header.Get("Content-Type"), tc.want, body)
			}
			if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error.Code != tc.wantCode || e.Error.Message == "" {
				t.Fatalf("body %s (%v), want code %s with a message", body, err, tc.wantCode)
			}
		})
	}
	t.Run("bare prefix gets its slash", func(t *testing.T) {
		resp, _ := get(t, c, r.srv.URL+"/proxy/"+running+"/8080?a=b")
		if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != "/proxy/"+running+"/8080/?a=b" {
			t.Fatalf("status %d Location %q", resp.StatusCode, resp.Header.Get("Location"))
		}
	})
	t.Run("other paths reach the mux", func(t *testing.T) {
		if resp, _ := get(t, c, r.srv.URL+"/healthz"); resp.StatusCode != http.StatusOK {
			t.Fatalf("healthz %d", resp.StatusCode)
		}
	})
}

// freePort returns a loopback port nothing listens on (for now).
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return p
}

// An application's redirects, root-relative and absolute, come back under
// the port's prefix, and a directory listing reached without its trailing
// slash settles after one redirect instead of looping.
func TestPortProxyRedirectsAndTrailingSlashes(t *testing.T) {
	t.Parallel()
	r := newProxyRig(t)
	sid := r.create(t)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "dir", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "dir", "file.txt"), []byte("content"), 0o644); err != nil {
		t.Fatal(err)
	}
	var app *httptest.Server
	mux := http.NewServeMux()
	mux.Handle("/files/", http.StripPrefix("/files", http.FileServer(http.Dir(root))))
	// A directory redirect like python3 -m http.server's: the absolute
	// path with a slash added.
	mux.HandleFunc("/py/", func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/") {
			http.Redirect(w, r, r.URL.Path+"/", http.StatusMovedPermanently)
			return
		}
		fmt.Fprintf(w, "listing of %s", r.URL.Path)
	})
	mux.HandleFunc("/login", func(w http.ResponseWriter, r *http.Request) {
		// The host the app saw: the guest address and port.
		http.Redirect(w, r, "http://"+r.Host+"/home/?from=login", http.StatusFound)
	})
	mux.HandleFunc("/loopback", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, fmt.Sprintf("http://localhost:%d/home/", portOf(t, app)), http.StatusFound)
	})
	mux.HandleFunc("/away", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "https://example.com/x", http.StatusFound)
	})
	mux.HandleFunc("/home/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "home %s %s", r.URL.RawQuery, r.Header.Get("X-Forwarded-Host"))
	})
	app = httptest.NewServer(mux)
	t.Cleanup(app.Close)
	prefix := fmt.Sprintf("/proxy/%s/%d", sid, portOf(t, app))

	noFollow := testClient(t, false)
	tests := []struct {
		path, wantLocation string
	}{
		{"/py/a", prefix + "/py/a/"},
		{"/files/dir", "dir/"},
		{"/login", prefix + "/home/?from=login"},
		{"/loopback", prefix + "/home/"},
		{"/away", "https://example.com/x"},
	}
	for _, tc := range tests {
		t.Run("redirect "+tc.path, func(t *testing.T) {
			resp, _ := get(t, noFollow, r.srv.URL+prefix+tc.path)
			if got := resp.Header.Get("Location"); resp.StatusCode/100 != 3 || got != tc.wantLocation {
				t.Fatalf("status %d Location %q, want %q", resp.StatusCode, got, tc.wantLocation)
			}
		})
	}

	follow := testClient(t, true)
	follows := []struct{ path, wantFinal, wantBody string }{
		{"/py/a", prefix + "/py/a/", "listing of /py/a/"},
		{"/files/dir", prefix + "/files/dir/", `<a href="file.txt">file.txt</a>`},
		{"/files/dir/sub/", prefix + "/files/dir/sub/", "<pre>"},
		{"/login", prefix + "/home/", "home from=login"},
	}
	for _, tc := range follows {
		t.Run("follow "+tc.path, func(t *testing.T) {
			var hops int
			c := *follow
			c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
				hops = len(via)
				if len(via) > 3 {
					return errors.New("redirect loop")
				}
				return nil
			}
			resp, body := get(t, &c, r.srv.URL+prefix+tc.path)
			if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != tc.wantFinal || !strings.Contains(body, tc.wantBody) || hops > 1 {
				t.Fatalf("ended at %s with %d after %d redirects: %q; want %s containing %q", resp.Request.URL.Path, resp.StatusCode, hops, body, tc.wantFinal, tc.wantBody)
			}
		})
	}

	t.Run("path is not cleaned", func(t *testing.T) {
		// A mux would clean this to another sandbox's prefix; the proxy
		// hands this sandbox's application the path as it came.
		raw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.EscapedPath()) }))
		t.Cleanup(raw.Close)
		rest := "/a/../../" + newID() + "/80/%2F/"
		path := fmt.Sprintf("/proxy/%s/%d%s", sid, portOf(t, raw), rest)
		req, _ := http.NewRequest(http.MethodGet, r.srv.URL, nil)
		req.URL.Opaque = path
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != rest {
			t.Fatalf("status %d, application saw %q, want %q", resp.StatusCode, b, rest)
		}
	})
}

// A raw HTTP Upgrade through the proxy: the application hijacks and echoes
// bytes, so every byte after the 101 crosses the tunnel both ways.
func TestPortProxyWebSocketUpgradeEcho(t *testing.T) {
	t.Parallel()
	r := newProxyRig(t)
	sid := r.create(t)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want upgrade", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", wsAccept(req.Header.Get("Sec-WebSocket-Key")))
		brw.Flush()
		_, _ = io.Copy(conn, brw)
	}))
	t.Cleanup(app.Close)
	before := r.touchedAt(t, sid)
	r.clock.advance(time.Minute)

	conn, err := net.Dial("tcp", r.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	key := "dGhlIHNhbXBsZSBub25jZQ=="
	fmt.Fprintf(conn, "GET /proxy/%s/%d/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", sid, portOf(t, app), key)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != wsAccept(key) {
		t.Fatalf("handshake answered %d %v", resp.StatusCode, resp.Header)
	}
	for _, msg := range []string{"hello", strings.Repeat("x", 100000)} {
		r.clock.advance(time.Minute)
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(br, got); err != nil {
			t.Fatal(err)
		}
		if string(got) != msg {
			t.Fatalf("echo of %d bytes differs", len(msg))
		}
		// Traffic on the tunnel is activity.
		if at := r.touchedAt(t, sid); !at.Equal(r.clock.Now()) {
			t.Fatalf("last activity %s, want %s (before: %s)", at, r.clock.Now(), before)
		}
	}
}

func (r *proxyRig) touchedAt(t *testing.T, sid string) time.Time {
	t.Helper()
	sb, err := r.m.Get(sid)
	if err != nil {
		t.Fatal(err)
	}
	return time.Unix(0, sb.lastActive.Load()).UTC()
}

// A port that starts listening 200 ms after the request arrives is reached
// by the dial retry instead of failing with 502.
func TestPortProxyDialRetryReachesLatePort(t *testing.T) {
	t.Parallel()
	r := newProxyRig(t)
	sid := r.create(t)
	port := freePort(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "late") }), ReadHeaderTimeout: time.Second}
	served := make(chan error, 1)
	go func() {
		time.Sleep(200 * time.Millisecond)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			served <- err
			return
		}
		served <- srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("late server: %v", err)
		}
	})
	start := time.Now()
	resp, body := get(t, testClient(t, false), fmt.Sprintf("%s/proxy/%s/%d/", r.srv.URL, sid, port))
	if resp.StatusCode != http.StatusOK || body != "late" {
		t.Fatalf("status %d %q after %s", resp.StatusCode, body, time.Since(start))
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("answered after %s, before the port opened", d)
	}
}

// Proxied requests count as activity, and destroying a sandbox drops its
// cached proxies (on every destroy path, through Manager.OnRemove).
func TestPortProxyActivityAndEvictionOnDestroy(t *testing.T) {
	t.Parallel()
	r := newProxyRig(t)
	sid := r.create(t)
	other := r.create(t)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(app.Close)
	app2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(app2.Close)
	c := testClient(t, false)

	r.clock.advance(time.Hour)
	for _, s := range []*httptest.Server{app, app2} {
		for range 2 {
			if resp, _ := get(t, c, fmt.Sprintf("%s/proxy/%s/%d/", r.srv.URL, sid, portOf(t, s))); resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
		}
	}
	if resp, _ := get(t, c, fmt.Sprintf("%s/proxy/%s/%d/", r.srv.URL, other, portOf(t, app))); resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if at := r.touchedAt(t, sid); !at.Equal(r.clock.Now()) {
		t.Fatalf("last activity %s, want %s", at, r.clock.Now())
	}
	if n := r.p.cached(sid); n != 2 {
		t.Fatalf("%d cached proxies for two ports, want 2 (one per port, reused)", n)
	}
	if err := r.m.Destroy(context.Background(), sid); err != nil {
		t.Fatal(err)
	}
	if n := r.p.cached(sid); n != 0 {
		t.Fatalf("%d cached proxies left after destroy", n)
	}
	if n := r.p.cached(other); n != 1 {
		t.Fatalf("destroy of one sandbox evicted another's proxy: %d left", n)
	}
	if resp, _ := get(t, c, fmt.Sprintf("%s/proxy/%s/%d/", r.srv.URL, sid, portOf(t, app))); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("destroyed sandbox answered %d, want 404", resp.StatusCode)
	}
}

// wsAccept is RFC 6455's Sec-WebSocket-Accept for a key.
func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

// An event stream's first event reaches the client while the application
// still holds the response open: streaming responses are flushed as they
// come, even though downloads of known length are not flushed per write.
func TestPortProxyStreamsEventsAsTheyCome(t *testing.T) {
	t.Parallel()
	r := newProxyRig(t)
	sid := r.create(t)
	release := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-req.Context().Done():
		}
	}))
	t.Cleanup(app.Close)
	t.Cleanup(func() { close(release) })
	resp, err := testClient(t, false).Get(fmt.Sprintf("%s/proxy/%s/%d/events", r.srv.URL, sid, portOf(t, app)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event %q, %v", line, err)
	}
}

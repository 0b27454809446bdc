package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// proxyDomain is the stack's WRENN_DOMAIN; clients connect to the control
// plane's address and name the port URL in the Host header.
const proxyDomain = "sandbox.localhost"

// wsEchoPy is a minimal RFC 6455 echo server (the image has python3 but no
// WebSocket library): handshake, then every data frame back unmasked.
const wsEchoPy = `
import base64, hashlib, socket, struct, threading
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def serve(c):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = c.recv(4096)
        if not chunk:
            return
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    key = ""
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"sec-websocket-key":
            key = v.strip().decode()
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
    def need(n):
        nonlocal buf
        while len(buf) < n:
            chunk = c.recv(65536)
            if not chunk:
                raise EOFError
            buf += chunk
        out, buf = buf[:n], buf[n:]
        return out
    while True:
        b0, b1 = need(2)
        op, n = b0 & 15, b1 & 127
        if n == 126:
            n = struct.unpack(">H", need(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", need(8))[0]
        mask = need(4) if b1 & 128 else b"\0\0\0\0"
        data = bytes(x ^ mask[i % 4] for i, x in enumerate(need(n)))
        if op == 8:
            c.sendall(b"\x88\x00")
            return
        hdr = bytes([128 | op])
        if n < 126:
            hdr += bytes([n])
        elif n < 65536:
            hdr += bytes([126]) + struct.pack(">H", n)
        else:
            hdr += bytes([127]) + struct.pack(">Q", n)
        c.sendall(hdr + data)
def run(c):
    try:
        serve(c)
    except Exception:
        pass
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8765))
s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=run, args=(c,), daemon=True).start()
`

// TestPortProxy drives port traffic as a user would: a directory listing
// of python3 -m http.server through the header pair and the subdomain, with
// its trailing-slash redirect settling in one hop; a WebSocket echo through
// control plane → agent → sandbox; and the routes gone after destroy.
func TestPortProxy(t *testing.T) {
	s := startStack(t)
	before := snapshotResources(t, s.dir)
	sid := s.runningSandbox()
	s.execOK(sid, "mkdir -p /tmp/www/dir/sub && echo hello > /tmp/www/dir/file.txt")
	s.execOK(sid, "setsid python3 -m http.server 8000 --bind 0.0.0.0 --directory /tmp/www >/tmp/http.log 2>&1 < /dev/null &")
	s.execOK(sid, "echo "+base64.StdEncoding.EncodeToString([]byte(wsEchoPy))+" | base64 -d > /tmp/ws.py && (setsid python3 /tmp/ws.py >/tmp/ws.log 2>&1 < /dev/null &)")
	// Wait until both listen (the proxy's dial retry covers only a moment).
	s.execOK(sid, waitListening(8000, 8765))

	routes := map[string][]string{
		"header pair": {"E2b-Sandbox-Id", sid, "E2b-Sandbox-Port", "8000"},
		"subdomain":   {"Host", "8000-" + sid + "." + proxyDomain},
	}
	for name, hdrs := range routes {
		t.Run(name, func(t *testing.T) {
			// python's directory redirect is root-relative "/dir/"; the
			// agent prefixes it and the control plane strips it again.
			resp, _ := s.portGet(t, "/dir", false, hdrs...)
			if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/dir/" {
				t.Fatalf("GET /dir: %d Location %q, want 301 to /dir/", resp.StatusCode, resp.Header.Get("Location"))
			}
			resp, body := s.portGet(t, "/dir", true, hdrs...)
			if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/dir/" || !strings.Contains(body, `href="file.txt"`) || !strings.Contains(body, `href="sub/"`) {
				t.Fatalf("following /dir ended at %s with %d: %s", resp.Request.URL.Path, resp.StatusCode, body)
			}
			resp, body = s.portGet(t, "/dir/sub/", true, hdrs...)
			if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/dir/sub/" || !strings.Contains(body, "Directory listing for /dir/sub/") {
				t.Fatalf("/dir/sub/: %s %d %s", resp.Request.URL.Path, resp.StatusCode, body)
			}
			resp, body = s.portGet(t, "/dir/file.txt", false, hdrs...)
			if resp.StatusCode != http.StatusOK || body != "hello\n" {
				t.Fatalf("file: %d %q", resp.StatusCode, body)
			}
		})
	}

	t.Run("agent path directly", func(t *testing.T) {
		resp, err := s.client.Get(s.agentURL + "/proxy/" + sid + "/8000/dir/file.txt")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != "hello\n" {
			t.Fatalf("%d %q", resp.StatusCode, b)
		}
	})

	t.Run("websocket echo through control plane, agent and sandbox", func(t *testing.T) {
		conn := s.wsDial(t, "8765-"+sid+"."+proxyDomain, "/echo")
		defer conn.Close()
		for _, msg := range [][]byte{[]byte("hello"), bytes.Repeat([]byte("wrenn"), 2000)} {
			if err := wsWrite(conn, 1, msg); err != nil {
				t.Fatal(err)
			}
			op, got, err := wsRead(conn)
			if err != nil || op != 1 || !bytes.Equal(got, msg) {
				t.Fatalf("echo of %d bytes: op %d, %d bytes, %v", len(msg), op, len(got), err)
			}
		}
		if err := wsWrite(conn, 8, nil); err != nil {
			t.Fatal(err)
		}
		if op, _, err := wsRead(conn); err != nil || op != 8 {
			t.Fatalf("close: op %d %v", op, err)
		}
	})

	t.Run("unknown port is 502 after the dial retry", func(t *testing.T) {
		resp, _ := s.portGet(t, "/", false, "E2b-Sandbox-Id", sid, "E2b-Sandbox-Port", "9")
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})

	s.mustDo(http.MethodDelete, "/v1/sandboxes/"+sid, nil, http.StatusAccepted, nil)
	s.waitStatus(sid, "stopped", time.Minute)
	t.Run("destroyed sandbox is gone from both proxies", func(t *testing.T) {
		if resp, _ := s.portGet(t, "/dir/", false, "Host", "8000-"+sid+"."+proxyDomain); resp.StatusCode != http.StatusNotFound {
			t.Fatalf("control plane: %d", resp.StatusCode)
		}
		resp, err := s.client.Get(s.agentURL + "/proxy/" + sid + "/8000/dir/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("agent: %d", resp.StatusCode)
		}
	})
	// The servers started inside went with the sandbox.
	assertNoLeaks(t, before, settledResources(t, s.dir, sid), sid)
}

// waitListening is a shell line that waits up to 10 s until every port
// accepts connections inside the sandbox.
func waitListening(ports ...int) string {
	var checks []string
	for _, p := range ports {
		checks = append(checks, fmt.Sprintf("socket.create_connection(('127.0.0.1', %d)).close()", p))
	}
	return fmt.Sprintf("for i in $(seq 100); do python3 -c \"import socket; %s\" 2>/dev/null && exit 0; sleep 0.1; done; exit 1", strings.Join(checks, "; "))
}

// runningSandbox creates a sandbox and waits until it runs.
func (s *stack) runningSandbox() string {
	s.t.Helper()
	var sb sandbox
	s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 512}, http.StatusAccepted, &sb)
	s.waitStatus(sb.ID, "running", time.Minute)
	return sb.ID
}

func (s *stack) execOK(sid, cmd string) string {
	s.t.Helper()
	var res execResult
	s.mustDo(http.MethodPost, "/v1/sandboxes/"+sid+"/exec", map[string]any{"cmd": cmd}, http.StatusOK, &res)
	if res.ExitCode != 0 {
		s.t.Fatalf("exec %q exited %d: %s %s", cmd, res.ExitCode, res.Stdout, res.Stderr)
	}
	return res.Stdout
}

// portGet sends a GET to the control plane with hdrs ("Host" sets the
// Host header), following redirects only if follow, and fails after three.
func (s *stack) portGet(t *testing.T, path string, follow bool, hdrs ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.apiURL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	set := func(r *http.Request) {
		for i := 0; i+1 < len(hdrs); i += 2 {
			if hdrs[i] == "Host" {
				r.Host = hdrs[i+1]
			} else {
				r.Header.Set(hdrs[i], hdrs[i+1])
			}
		}
	}
	set(req)
	c := *s.client
	c.CheckRedirect = func(r *http.Request, via []*http.Request) error {
		if !follow {
			return http.ErrUseLastResponse
		}
		if len(via) > 3 {
			return errors.New("redirect loop")
		}
		set(r)
		return nil
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// wsDial opens a WebSocket to the control plane with the given Host.
func (s *stack) wsDial(t *testing.T, host, path string) net.Conn {
	t.Helper()
	u, _ := url.Parse(s.apiURL)
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	keyBytes := make([]byte, 16)
	_, _ = rand.Read(keyBytes)
	key := base64.StdEncoding.EncodeToString(keyBytes)
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", path, host, key)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		conn.Close()
		t.Fatalf("handshake: %d %v", resp.StatusCode, resp.Header)
	}
	return &bufConn{Conn: conn, r: br}
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// wsWrite sends one final, masked frame (clients must mask).
func wsWrite(w io.Writer, op byte, payload []byte) error {
	hdr := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n < 65536:
		hdr = append(hdr, 0x80|126)
		hdr = binary.BigEndian.AppendUint16(hdr, uint16(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	mask := make([]byte, 4)
	_, _ = rand.Read(mask)
	hdr = append(hdr, mask...)
	masked := make([]byte, len(payload))
	for i, b := range payload {
		masked[i] = b ^ mask[i%4]
	}
	_, err := w.Write(append(hdr, masked...))
	return err
}

// wsRead reads one unmasked server frame.
func wsRead(r io.Reader) (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 1<<24 {
		return 0, nil, fmt.Errorf("frame of %d bytes", n)
	}
	p := make([]byte, n)
	_, err := io.ReadFull(r, p)
	return h[0] & 0x0f, p, err
}

// BenchmarkPortProxyThroughput downloads a 256 MiB file from python3 -m
// http.server in a sandbox three ways: straight from the guest address, via
// the agent's /proxy/ path, and via the control plane's port URL, and
// reports each path's MB/s and its ratio to direct.
func BenchmarkPortProxyThroughput(b *testing.B) {
	s := startStack(b)
	var sb sandbox
	s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 2, "memory_mb": 1024}, http.StatusAccepted, &sb)
	s.waitStatus(sb.ID, "running", time.Minute)
	sid := sb.ID
	run := func(cmd string) string {
		var res execResult
		s.mustDo(http.MethodPost, "/v1/sandboxes/"+sid+"/exec", map[string]any{"cmd": cmd}, http.StatusOK, &res)
		if res.ExitCode != 0 {
			b.Fatalf("exec %q: %d %s", cmd, res.ExitCode, res.Stderr)
		}
		return res.Stdout
	}
	const size = 256 << 20
	run(fmt.Sprintf("mkdir -p /tmp/www && head -c %d /dev/zero > /tmp/www/big", size))
	run("setsid python3 -m http.server 8000 --bind 0.0.0.0 --directory /tmp/www >/dev/null 2>&1 < /dev/null &")
	run(waitListening(8000))
	guest := strings.TrimSpace(run("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n1"))

	u, _ := url.Parse(s.apiURL)
	paths := []struct {
		name, url, host string
	}{
		{"direct", "http://" + net.JoinHostPort(guest, "8000") + "/big", ""},
		{"agent", s.agentURL + "/proxy/" + sid + "/8000/big", ""},
		{"control-plane", "http://" + u.Host + "/big", "8000-" + sid + "." + proxyDomain},
	}
	rates := map[string]float64{}
	for _, p := range paths {
		b.Run(p.name, func(b *testing.B) {
			b.SetBytes(size)
			start := time.Now()
			for range b.N {
				req, _ := http.NewRequest(http.MethodGet, p.url, nil)
				if p.host != "" {
					req.Host = p.host
				}
				resp, err := s.client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || n != size || resp.StatusCode != http.StatusOK {
					b.Fatalf("%s: %d bytes, status %d, %v", p.name, n, resp.StatusCode, err)
				}
			}
			mbps := float64(size) * float64(b.N) / time.Since(start).Seconds() / 1e6
			rates[p.name] = mbps
			if d := rates["direct"]; d > 0 && p.name != "direct" {
				b.ReportMetric(mbps/d, "ratio-to-direct")
			}
		})
	}
	s.mustDo(http.MethodDelete, "/v1/sandboxes/"+sid, nil, http.StatusAccepted, nil)
	s.waitStatus(sid, "stopped", time.Minute)
}

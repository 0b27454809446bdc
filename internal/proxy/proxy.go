// Package proxy holds the pure pieces of port forwarding that the host agent
// and the control plane share: parsing the agent's /proxy/{id}/{port} paths
// and the control plane's {port}-{id}.{domain} host names, and rewriting
// redirects between the sandbox's view of its URLs and the user's. It does
// no I/O, so both sides agree on every edge case and fuzzing reaches all of
// it.
package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/wrenn/wrenn/pkg/id"
)

// PathPrefix starts every path the agent's port proxy serves.
const PathPrefix = "/proxy/"

// Header names of the header-pair routing E2B's SDKs use when one address
// serves every sandbox (E2B_SANDBOX_URL).
const (
	HeaderSandboxID   = "E2b-Sandbox-Id"
	HeaderSandboxPort = "E2b-Sandbox-Port"
)

// ErrorHeader marks an answer the agent's proxy wrote itself (its value is
// the error code), so the control plane can tell "no such sandbox here" from
// an application's own 404 and drop its cached route.
const ErrorHeader = "X-Wrenn-Proxy-Error"

// ErrInvalid is wrapped by every parse failure of a proxy path or host, so
// callers answer 400 without comparing messages.
var ErrInvalid = errors.New("invalid sandbox port address")

// ErrNotSandboxHost is returned by ParseHost for a host outside the sandbox
// domain: the request is not port traffic and belongs to the API.
var ErrNotSandboxHost = errors.New("not a sandbox host")

// Target is one port of one sandbox.
type Target struct {
	SandboxID string
	Port      int
}

// Prefix is the agent path under which the target's port is served, without
// a trailing slash: the sandbox's "/x" is the agent's Prefix()+"/x".
func (t Target) Prefix() string {
	return PathPrefix + t.SandboxID + "/" + strconv.Itoa(t.Port)
}

// ParsePort accepts a TCP port in canonical decimal form, 1 to 65535. Leading
// zeros are refused so each port has one spelling (it is part of cache keys
// and host names).
func ParsePort(s string) (int, error) {
	if s == "" || len(s) > 5 || s[0] == '0' {
		return 0, fmt.Errorf("%w: port %q must be a number from 1 to 65535", ErrInvalid, s)
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%w: port %q must be a number from 1 to 65535", ErrInvalid, s)
		}
	}
	n, _ := strconv.Atoi(s)
	if n > 65535 {
		return 0, fmt.Errorf("%w: port %q must be a number from 1 to 65535", ErrInvalid, s)
	}
	return n, nil
}

// ParseTarget checks a sandbox id and port given separately (the header
// pair).
func ParseTarget(sandboxID, port string) (Target, error) {
	if !id.Valid(id.Sandbox, sandboxID) {
		return Target{}, fmt.Errorf("%w: %q is not a sandbox id", ErrInvalid, sandboxID)
	}
	p, err := ParsePort(port)
	if err != nil {
		return Target{}, err
	}
	return Target{SandboxID: sandboxID, Port: p}, nil
}

// ParsePath splits an agent request path /proxy/{id}/{port}{rest}. It works
// on the escaped path and never cleans it: dot segments and encoded slashes
// in rest belong to the sandbox's application, and cannot move the request
// to another sandbox or port. rest is empty or starts with "/";
// Prefix()+rest is the input.
func ParsePath(escapedPath string) (Target, string, error) {
	s, ok := strings.CutPrefix(escapedPath, PathPrefix)
	if !ok {
		return Target{}, "", fmt.Errorf("%w: path %q does not start with %s", ErrInvalid, escapedPath, PathPrefix)
	}
	sid, s, ok := strings.Cut(s, "/")
	if !ok {
		return Target{}, "", fmt.Errorf("%w: path %q has no port after the sandbox id", ErrInvalid, escapedPath)
	}
	port, rest := s, ""
	if i := strings.IndexByte(s, '/'); i >= 0 {
		port, rest = s[:i], s[i:]
	}
	t, err := ParseTarget(sid, port)
	if err != nil {
		return Target{}, "", err
	}
	return t, rest, nil
}

// ParseHost parses a port URL's host, {port}-{sandbox_id}.{domain} with an
// optional :port, case-insensitively and ignoring a trailing dot. A host
// outside domain is ErrNotSandboxHost; a host under it that names no valid
// port and sandbox wraps ErrInvalid.
func ParseHost(host, domain string) (Target, error) {
	domain = strings.TrimSuffix(strings.ToLower(domain), ".")
	if domain == "" {
		return Target{}, ErrNotSandboxHost
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	label, ok := strings.CutSuffix(host, "."+domain)
	if !ok {
		return Target{}, ErrNotSandboxHost
	}
	if strings.Contains(label, ".") {
		return Target{}, fmt.Errorf("%w: host %q is not {port}-{sandbox_id}.%s", ErrInvalid, host, domain)
	}
	port, sid, ok := strings.Cut(label, "-")
	if !ok {
		return Target{}, fmt.Errorf("%w: host %q is not {port}-{sandbox_id}.%s", ErrInvalid, host, domain)
	}
	return ParseTarget(sid, port)
}

// Host is the port URL host of t under domain, the inverse of ParseHost.
func Host(t Target, domain string) string {
	return strconv.Itoa(t.Port) + "-" + t.SandboxID + "." + strings.TrimSuffix(domain, ".")
}

// RewriteLocation maps a redirect the sandbox's application sent into the
// agent's path space: root-relative targets ("/x") and absolute URLs that
// point at the sandbox's own port (its guest address, localhost, 127.0.0.1,
// 0.0.0.0, ::1 or its hostname, the sandbox id) become Prefix()+path, keeping
// query, fragment and any trailing slash exactly. Anything else (relative
// paths, other hosts and ports) is returned unchanged: relative targets
// already resolve under the prefix, and other sites are other sites.
func RewriteLocation(loc string, t Target, guestIP string) string {
	if strings.HasPrefix(loc, "/") && !strings.HasPrefix(loc, "//") {
		return t.Prefix() + loc
	}
	u, err := url.Parse(loc)
	if err != nil || u.Host == "" || u.Opaque != "" || u.User != nil {
		return loc
	}
	if !isSelf(u, t, guestIP) {
		return loc
	}
	rest := u.EscapedPath()
	if rest == "" {
		rest = "/"
	}
	if u.RawQuery != "" || u.ForceQuery {
		rest += "?" + u.RawQuery
	}
	if u.Fragment != "" {
		rest += "#" + u.EscapedFragment()
	}
	return t.Prefix() + rest
}

// isSelf reports whether u names t's port as seen from inside the sandbox.
func isSelf(u *url.URL, t Target, guestIP string) bool {
	port := u.Port()
	switch {
	case port != "":
	case u.Scheme == "http" || u.Scheme == "ws" || u.Scheme == "":
		// A scheme-relative URL has the scheme of the request, which is
		// plain HTTP between the agent and the sandbox.
		port = "80"
	case u.Scheme == "https" || u.Scheme == "wss":
		port = "443"
	default:
		return false
	}
	if port != strconv.Itoa(t.Port) {
		return false
	}
	switch h := strings.ToLower(u.Hostname()); h {
	case "localhost", "127.0.0.1", "0.0.0.0", "::1", strings.ToLower(t.SandboxID):
		return true
	default:
		return guestIP != "" && h == guestIP
	}
}

// StripLocation undoes the agent's prefix for the control plane's users: a
// root-relative redirect under t's prefix becomes the same path without it
// ("/proxy/{id}/{port}/x" → "/x", the bare prefix → "/"). Other values are
// returned unchanged.
func StripLocation(loc string, t Target) string {
	rest, ok := strings.CutPrefix(loc, t.Prefix())
	if !ok {
		return loc
	}
	switch {
	case rest == "":
		return "/"
	case rest[0] == '/':
		return rest
	case rest[0] == '?' || rest[0] == '#':
		return "/" + rest
	}
	// "/proxy/id/80" + "80/x" would be port 8080: not ours.
	return loc
}

// copyBufferSize is the reverse proxies' copy buffer: large copies mean
// fewer read and write system calls per byte, which is most of a proxy's
// cost on a bulk download.
const copyBufferSize = 256 << 10

// BufferPool hands reverse proxies their copy buffers, shared by every
// proxy of the process so idle ones hold no memory.
type BufferPool struct{ p sync.Pool }

// Get returns a buffer of copyBufferSize bytes.
func (b *BufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, copyBufferSize)
}

// Put returns a buffer from Get.
func (b *BufferPool) Put(buf []byte) {
	if cap(buf) >= copyBufferSize {
		buf = buf[:copyBufferSize]
		b.p.Put(&buf)
	}
}

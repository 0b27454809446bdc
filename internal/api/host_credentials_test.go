package api

import (
	"context"
	"crypto/x509"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/pki"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// withCA gives the API a fresh certificate authority.
func withCA(e *env, d *Deps) {
	ca, _, err := pki.NewCA(time.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	d.CA = ca
}

// registerAgent creates a host and registers it through the API, sending
// csr when not empty.
func (e *env) registerAgent(admin, name, address, csr string) (resp, HostCredentials) {
	e.t.Helper()
	r := e.do("POST", "/v1/admin/hosts", admin, map[string]string{"name": name})
	var created struct {
		Token string `json:"registration_token"`
	}
	r.decode(e.t, &created)
	body := map[string]any{"registration_token": created.Token, "address": address, "runtime": "runc", "vcpus": 8, "memory_mb": 16384, "disk_mb": 100000}
	if csr != "" {
		body["csr"] = csr
	}
	r = e.do("POST", "/v1/hosts/register", "", body)
	var c HostCredentials
	if r.status == http.StatusOK {
		r.decode(e.t, &c)
	}
	return r, c
}

func (e *env) heartbeatStatus(token string) int {
	e.t.Helper()
	return e.do("POST", "/v1/hosts/heartbeat", "", map[string]any{"address": "http://127.0.0.1:9090", "runtime": "runc", "vcpus": 8, "memory_mb": 16384, "disk_mb": 100000},
		"Authorization", "Bearer "+token).status
}

func newCSR(t *testing.T) string {
	t.Helper()
	key, err := pki.NewKey()
	must(t, err)
	csr, err := pki.NewCSR(key)
	must(t, err)
	return string(csr)
}

func TestRegisterWithCSR(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withCA)
	_, admin := e.team(true)

	// A broken CSR is refused before the registration token is used up.
	r := e.do("POST", "/v1/admin/hosts", admin, map[string]string{"name": "h1"})
	var created struct {
		Token string `json:"registration_token"`
	}
	r.decode(t, &created)
	body := map[string]any{"registration_token": created.Token, "address": "https://10.1.2.3:9090", "runtime": "runc", "csr": "not a csr"}
	r = e.do("POST", "/v1/hosts/register", "", body)
	if _, msg := r.errCode(t); r.status != 400 || !strings.HasPrefix(msg, "csr") {
		t.Fatalf("bad csr: %d %s", r.status, r.body)
	}
	body["csr"] = newCSR(t)
	r = e.do("POST", "/v1/hosts/register", "", body)
	if r.status != http.StatusOK {
		t.Fatalf("register after a bad csr: %d %s", r.status, r.body)
	}
	var c HostCredentials
	r.decode(t, &c)
	if c.HostToken == "" || !strings.HasPrefix(c.RefreshToken, "wrf_") || c.Certificate == "" || c.CACertificate == "" {
		t.Fatalf("credentials %+v", c)
	}
	var stored string
	must(t, e.pool.QueryRow(t.Context(), "SELECT refresh_token_hash FROM hosts WHERE id = $1", c.HostID).Scan(&stored))
	if stored != hashSecret(c.RefreshToken) {
		t.Error("refresh token not stored as its hash")
	}
	cert, err := pki.ParseCertificate([]byte(c.Certificate))
	must(t, err)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(c.CACertificate))
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: "10.1.2.3", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("certificate does not verify for the advertised address: %v", err)
	}
	if len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(net.ParseIP("10.1.2.3")) || len(cert.DNSNames) != 0 {
		t.Errorf("SANs: %v %v", cert.IPAddresses, cert.DNSNames)
	}

	// Without a CSR: tokens, no certificate.
	r, c2 := e.registerAgent(admin, "h2", "http://127.0.0.1:9091", "")
	if r.status != http.StatusOK || c2.RefreshToken == "" || c2.Certificate != "" {
		t.Fatalf("register without csr: %d %s", r.status, r.body)
	}
}

func TestRegisterCSRWithoutCA(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, admin := e.team(true)
	r, _ := e.registerAgent(admin, "h1", "https://127.0.0.1:9090", newCSR(t))
	if _, msg := r.errCode(t); r.status != 400 || !strings.HasPrefix(msg, "csr") {
		t.Fatalf("csr without a CA: %d %s", r.status, r.body)
	}
}

func TestRefreshRotatesCredentials(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withCA)
	_, admin := e.team(true)
	r, c := e.registerAgent(admin, "h1", "https://agent.example:9090", newCSR(t))
	if r.status != http.StatusOK {
		t.Fatalf("register: %d %s", r.status, r.body)
	}
	if s := e.heartbeatStatus(c.HostToken); s != http.StatusNoContent {
		t.Fatalf("heartbeat: %d", s)
	}
	r = e.do("POST", "/v1/hosts/refresh", "", map[string]any{"refresh_token": c.RefreshToken, "csr": newCSR(t)})
	if r.status != http.StatusOK {
		t.Fatalf("refresh: %d %s", r.status, r.body)
	}
	var n HostCredentials
	r.decode(t, &n)
	if n.HostID != c.HostID || n.HostToken == c.HostToken || n.RefreshToken == c.RefreshToken || n.Certificate == "" {
		t.Fatalf("refreshed %+v", n)
	}
	// The heartbeat above reported http://127.0.0.1:9090: the renewed
	// certificate names that, not the address given at registration.
	if cert, err := pki.ParseCertificate([]byte(n.Certificate)); err != nil || len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) || len(cert.DNSNames) != 0 {
		t.Errorf("renewed certificate: %v", err)
	}
	if s := e.heartbeatStatus(c.HostToken); s != http.StatusUnauthorized {
		t.Errorf("old host token after refresh: %d, want 401", s)
	}
	if s := e.heartbeatStatus(n.HostToken); s != http.StatusNoContent {
		t.Errorf("new host token: %d", s)
	}
	if r := e.do("POST", "/v1/hosts/refresh", "", map[string]any{"refresh_token": c.RefreshToken}); r.status != http.StatusUnauthorized {
		t.Errorf("old refresh token reused: %d", r.status)
	}
	if r := e.do("POST", "/v1/hosts/refresh", "", map[string]any{}); r.status != http.StatusBadRequest {
		t.Errorf("no refresh token: %d", r.status)
	}
	// A refresh with a bad CSR changes nothing.
	if r := e.do("POST", "/v1/hosts/refresh", "", map[string]any{"refresh_token": n.RefreshToken, "csr": "junk"}); r.status != http.StatusBadRequest {
		t.Errorf("bad csr on refresh: %d", r.status)
	}
	if s := e.heartbeatStatus(n.HostToken); s != http.StatusNoContent {
		t.Errorf("host token after a refused refresh: %d", s)
	}
}

// TestRefreshAnswerLost: an agent that never got the answer to its refresh
// still holds only the old tokens. Its host token is dead, but its refresh
// token trades again, until a heartbeat with the newest host token shows
// the host has them; the pair whose answer was lost never works.
func TestRefreshAnswerLost(t *testing.T) {
	t.Parallel()
	e := newEnv(t, withCA)
	_, admin := e.team(true)
	r, c := e.registerAgent(admin, "h1", "https://agent.example:9090", newCSR(t))
	if r.status != http.StatusOK {
		t.Fatalf("register: %d %s", r.status, r.body)
	}
	refresh := func(token string) (int, HostCredentials) {
		r := e.do("POST", "/v1/hosts/refresh", "", map[string]any{"refresh_token": token})
		var n HostCredentials
		if r.status == http.StatusOK {
			r.decode(t, &n)
		}
		return r.status, n
	}
	status, lost := refresh(c.RefreshToken)
	if status != http.StatusOK {
		t.Fatalf("first refresh: %d", status)
	}
	if s := e.heartbeatStatus(c.HostToken); s != http.StatusUnauthorized {
		t.Errorf("old host token after refresh: %d, want 401", s)
	}
	status, got := refresh(c.RefreshToken)
	if status != http.StatusOK {
		t.Fatalf("retry with the refresh token the agent still has: %d, want 200", status)
	}
	if got.HostID != c.HostID || got.HostToken == lost.HostToken || got.RefreshToken == lost.RefreshToken {
		t.Fatalf("retry answered %+v", got)
	}
	if s := e.heartbeatStatus(lost.HostToken); s != http.StatusUnauthorized {
		t.Errorf("host token of the lost answer: %d, want 401", s)
	}
	if s, _ := refresh(lost.RefreshToken); s != http.StatusUnauthorized {
		t.Errorf("refresh token of the lost answer: %d, want 401", s)
	}
	if s := e.heartbeatStatus(got.HostToken); s != http.StatusNoContent {
		t.Fatalf("heartbeat with the new host token: %d", s)
	}
	// The heartbeat confirmed the new credentials: the old refresh token
	// is spent for good, the new one works.
	if s, _ := refresh(c.RefreshToken); s != http.StatusUnauthorized {
		t.Errorf("old refresh token after the host confirmed new ones: %d, want 401", s)
	}
	if s, _ := refresh(got.RefreshToken); s != http.StatusOK {
		t.Errorf("current refresh token: %d", s)
	}
}

// recordingPublisher keeps the events it is given.
type recordingPublisher struct {
	mu  sync.Mutex
	evs []events.Event
}

func (p *recordingPublisher) Publish(_ context.Context, e events.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.evs = append(p.evs, e)
	return nil
}

func (p *recordingPublisher) find(sid string, to lifecycle.Status) *events.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.evs {
		if e.SandboxID == sid && e.To == to {
			return &e
		}
	}
	return nil
}

func TestDeleteHost(t *testing.T) {
	t.Parallel()
	pub := &recordingPublisher{}
	e := newEnv(t, withCA, func(_ *env, d *Deps) { d.Events = pub })
	_, admin := e.team(true)
	_, user := e.team(false)
	r, c := e.registerAgent(admin, "h1", "http://127.0.0.1:9090", "")
	if r.status != http.StatusOK {
		t.Fatalf("register: %d %s", r.status, r.body)
	}
	sid := e.create(user)

	r = e.do("GET", "/v1/admin/hosts", admin, nil)
	var list struct{ Hosts []Host }
	r.decode(t, &list)
	if len(list.Hosts) != 1 || list.Hosts[0].ActiveSandboxes != 1 || list.Hosts[0].UsedVCPUs < 1 || list.Hosts[0].UsedMemoryMB < 1 {
		t.Fatalf("hosts with use: %s", r.body)
	}

	if r := e.do("DELETE", "/v1/admin/hosts/"+c.HostID, user, nil); r.status != http.StatusForbidden {
		t.Errorf("non-admin delete: %d", r.status)
	}
	if r := e.do("DELETE", "/v1/admin/hosts/host-nope", admin, nil); r.status != http.StatusNotFound {
		t.Errorf("unknown host: %d", r.status)
	}
	if r := e.do("DELETE", "/v1/admin/hosts/"+c.HostID+"?force=maybe", admin, nil); r.status != http.StatusBadRequest {
		t.Errorf("bad force: %d", r.status)
	}
	r = e.do("DELETE", "/v1/admin/hosts/"+c.HostID, admin, nil)
	var busy struct {
		Error     struct{ Code string }
		Sandboxes []hostSandbox
	}
	r.decode(t, &busy)
	if r.status != http.StatusConflict || busy.Error.Code != CodeConflict || len(busy.Sandboxes) != 1 || busy.Sandboxes[0].ID != sid {
		t.Fatalf("delete busy host: %d %s", r.status, r.body)
	}
	if s := e.heartbeatStatus(c.HostToken); s != http.StatusNoContent {
		t.Fatalf("a refused delete changed the host: heartbeat %d", s)
	}

	if r := e.do("DELETE", "/v1/admin/hosts/"+c.HostID+"?force=true", admin, nil); r.status != http.StatusNoContent {
		t.Fatalf("forced delete: %d %s", r.status, r.body)
	}
	var status string
	must(t, e.pool.QueryRow(t.Context(), "SELECT status FROM sandboxes WHERE id = $1", sid).Scan(&status))
	if status != "stopped" {
		t.Errorf("sandbox of a deleted host is %s, want stopped", status)
	}
	if ev := pub.find(sid, lifecycle.Stopped); ev == nil || ev.From != lifecycle.Running || ev.HostID != c.HostID {
		t.Errorf("no running -> stopped event for the forced deletion: %+v", ev)
	}
	if s := e.heartbeatStatus(c.HostToken); s != http.StatusUnauthorized {
		t.Errorf("deleted host's token: %d, want 401", s)
	}
	if r := e.do("POST", "/v1/hosts/refresh", "", map[string]any{"refresh_token": c.RefreshToken}); r.status != http.StatusUnauthorized {
		t.Errorf("deleted host's refresh token: %d, want 401", r.status)
	}
	if r := e.do("DELETE", "/v1/admin/hosts/"+c.HostID, admin, nil); r.status != http.StatusNotFound {
		t.Errorf("delete twice: %d", r.status)
	}
	r = e.do("GET", "/v1/admin/hosts", admin, nil)
	r.decode(t, &list)
	if len(list.Hosts) != 0 {
		t.Errorf("deleted host still listed: %s", r.body)
	}
	// The name is free again.
	if r := e.do("POST", "/v1/admin/hosts", admin, map[string]string{"name": "h1"}); r.status != http.StatusCreated {
		t.Errorf("reuse a deleted host's name: %d %s", r.status, r.body)
	}
	// A host without sandboxes goes without force.
	_, c2 := e.registerAgent(admin, "h2", "http://127.0.0.1:9091", "")
	if r := e.do("DELETE", "/v1/admin/hosts/"+c2.HostID, admin, nil); r.status != http.StatusNoContent {
		t.Errorf("delete idle host: %d %s", r.status, r.body)
	}
}

package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/pki"
)

// fakeCP is a control plane's host endpoints over a real CA: it signs
// CSRs for the address the agent reports and rotates tokens on refresh.
type fakeCP struct {
	t    *testing.T
	ca   *pki.CA
	now  func() time.Time
	mu   sync.Mutex
	seq  int
	tok  string // current host token
	ref  string // current refresh token
	prev string // refresh token still taken until a heartbeat confirms tok
	hits map[string]int
}

func (f *fakeCP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hits[r.URL.Path]++
	var body map[string]any
	_ = json.NewDecoder(r.Body).Decode(&body)
	issue := func() {
		f.seq++
		f.tok, f.ref = "wrh_"+string(rune('a'+f.seq)), "wrf_"+string(rune('a'+f.seq))
		c := Credentials{HostID: "host-1", HostToken: f.tok, RefreshToken: f.ref}
		if csr, _ := body["csr"].(string); csr != "" {
			cert, err := f.ca.SignServer([]byte(csr), "https://127.0.0.1:1", f.now())
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			c.Certificate, c.CACertificate = string(cert), string(f.ca.CertPEM)
		}
		_ = json.NewEncoder(w).Encode(c)
	}
	switch r.URL.Path {
	case "/v1/hosts/register":
		issue()
	case "/v1/hosts/refresh":
		switch body["refresh_token"] {
		case f.ref:
			f.prev = f.ref
		case f.prev:
			if f.prev == "" {
				http.Error(w, `{"error":{"message":"bad refresh token"}}`, http.StatusUnauthorized)
				return
			}
		default:
			http.Error(w, `{"error":{"message":"bad refresh token"}}`, http.StatusUnauthorized)
			return
		}
		issue()
	case "/v1/hosts/heartbeat":
		if r.Header.Get("Authorization") != "Bearer "+f.tok {
			http.Error(w, `{"error":{"message":"invalid host token"}}`, http.StatusUnauthorized)
			return
		}
		f.prev = ""
		w.WriteHeader(http.StatusNoContent)
	default:
		http.NotFound(w, r)
	}
}

func TestRegistrarTLS(t *testing.T) {
	t.Parallel()
	ca, _, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var clockMu sync.Mutex
	clock := time.Now()
	now := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return clock }
	cp := &fakeCP{t: t, ca: ca, now: now, hits: map[string]int{}}
	cpSrv := httptest.NewServer(cp)
	defer cpSrv.Close()

	dir := t.TempDir()
	serverTLS := &ServerTLS{KeyPath: filepath.Join(dir, "agent", "tls-key.pem")}
	newReg := func() *Registrar {
		return &Registrar{
			CPURL: cpSrv.URL, Address: "https://127.0.0.1:1", Runtime: "fake",
			CredsPath: filepath.Join(dir, "agent", "credentials.json"), DataDir: dir,
			Client: cpSrv.Client(), Logger: slog.New(slog.DiscardHandler),
			TLS: true, KeyPath: serverTLS.KeyPath, Now: now, OnCredentials: serverTLS.Update,
		}
	}
	reg := newReg()
	ctx := context.Background()
	c, err := reg.Register(ctx, "wrr_token")
	if err != nil {
		t.Fatal(err)
	}
	if c.Certificate == "" || c.RefreshToken == "" {
		t.Fatalf("credentials %+v", c)
	}
	for _, p := range []string{reg.CredsPath, reg.KeyPath} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", p, fi.Mode(), err)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, "agent", ".*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}

	// The agent serves mutual TLS with what it got.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLS.Config())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, r.Proto) }),
		ErrorLog: log.New(io.Discard, "", 0)}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	clientCert, err := ca.ClientCertificate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	get := func(cfg *tls.Config) error {
		tr := &http.Transport{TLSClientConfig: cfg}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + ln.Addr().String())
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if string(b) != "HTTP/1.1" {
			t.Errorf("served over %q", b)
		}
		return nil
	}
	if err := get(ca.ClientTLS(clientCert)); err != nil {
		t.Fatalf("control plane client refused: %v", err)
	}
	if err := get(&tls.Config{RootCAs: ca.Pool()}); err == nil {
		t.Error("client without a certificate accepted")
	} else if oe := (*net.OpError)(nil); !errors.As(err, &oe) || oe.Op != "remote error" {
		t.Errorf("refused, but not at the handshake: %v", err)
	}

	// A fresh certificate is kept; one with less than a third of its life
	// left is renewed, rotating the tokens.
	certBefore := reg.Current().Certificate
	hbCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); reg.HeartbeatLoop(hbCtx, 10*time.Millisecond) }()
	waitFor(t, "three heartbeats", func() bool { cp.mu.Lock(); defer cp.mu.Unlock(); return cp.hits["/v1/hosts/heartbeat"] >= 3 })
	if reg.Current().Certificate != certBefore {
		t.Error("a fresh certificate was renewed")
	}
	clockMu.Lock()
	clock = clock.Add(pki.ServerLifetime * 2 / 3).Add(time.Hour)
	clockMu.Unlock()
	waitFor(t, "certificate renewal", func() bool { return reg.Current().Certificate != certBefore })
	stop()
	<-done
	cur := reg.Current()
	if cur.HostToken == c.HostToken || cur.RefreshToken == c.RefreshToken {
		t.Error("tokens not rotated with the certificate")
	}
	cp.mu.Lock()
	hbFailed := cp.tok != cur.HostToken
	cp.mu.Unlock()
	if hbFailed {
		t.Error("agent and control plane disagree on the host token")
	}
	// The renewed certificate was issued at the advanced clock.
	cfg := ca.ClientTLS(clientCert)
	cfg.Time = now
	renewed, err := pki.ParseCertificate([]byte(cur.Certificate))
	if err != nil {
		t.Fatal(err)
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if !cs.PeerCertificates[0].Equal(renewed) {
			return errors.New("the agent still serves its old certificate")
		}
		return nil
	}
	if err := get(cfg); err != nil {
		t.Fatalf("after renewal: %v", err)
	}

	// A restarted agent loads what was stored, without registering again.
	again := newReg()
	c2, err := again.Register(ctx, "")
	if err != nil || c2 != cur {
		t.Fatalf("reload: %v %+v", err, c2)
	}
	cp.mu.Lock()
	regs := cp.hits["/v1/hosts/register"]
	cp.mu.Unlock()
	if regs != 1 {
		t.Errorf("registered %d times", regs)
	}
}

func TestServerTLSRefusesBeforeRegistration(t *testing.T) {
	t.Parallel()
	s := &ServerTLS{KeyPath: filepath.Join(t.TempDir(), "none.pem")}
	if _, err := s.Config().GetConfigForClient(&tls.ClientHelloInfo{}); err == nil {
		t.Error("handshake allowed without a certificate")
	}
	if err := s.Update(Credentials{}); err == nil {
		t.Error("update without a key succeeded")
	}
}

// TestHeartbeatRecoversLostRefresh: a refresh rotated the tokens but its
// answer never reached the agent. The next heartbeat is refused, so the
// agent refreshes with the refresh token it still has and carries on.
func TestHeartbeatRecoversLostRefresh(t *testing.T) {
	t.Parallel()
	ca, _, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cp := &fakeCP{t: t, ca: ca, now: time.Now, hits: map[string]int{}}
	cpSrv := httptest.NewServer(cp)
	defer cpSrv.Close()
	dir := t.TempDir()
	reg := &Registrar{
		CPURL: cpSrv.URL, Address: "https://127.0.0.1:1", Runtime: "fake",
		CredsPath: filepath.Join(dir, "credentials.json"), DataDir: dir,
		Client: cpSrv.Client(), Logger: slog.New(slog.DiscardHandler),
		TLS: true, KeyPath: filepath.Join(dir, "tls-key.pem"), Now: time.Now,
	}
	ctx := context.Background()
	c, err := reg.Register(ctx, "wrr_token")
	if err != nil {
		t.Fatal(err)
	}
	// The refresh the control plane answered, lost on the way back.
	lost, err := json.Marshal(map[string]string{"refresh_token": c.RefreshToken})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cpSrv.Client().Post(cpSrv.URL+"/v1/hosts/refresh", "application/json", bytes.NewReader(lost))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("refresh behind the agent's back: %v %v", resp, err)
	}
	resp.Body.Close()

	if err := reg.Heartbeat(ctx); err != nil {
		t.Fatalf("heartbeat after a lost refresh: %v", err)
	}
	cur := reg.Current()
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cur.HostToken == c.HostToken || cur.HostToken != cp.tok || cur.RefreshToken != cp.ref {
		t.Errorf("agent holds %+v, control plane %s/%s", cur, cp.tok, cp.ref)
	}
	if cp.hits["/v1/hosts/heartbeat"] != 2 || cp.hits["/v1/hosts/refresh"] != 2 {
		t.Errorf("hits %v, want 2 heartbeats (refused, then accepted) and 2 refreshes", cp.hits)
	}
	// What the agent stored is what it uses: a restart keeps working.
	b, err := os.ReadFile(reg.CredsPath)
	if err != nil {
		t.Fatal(err)
	}
	var stored Credentials
	if err := json.Unmarshal(b, &stored); err != nil || stored.HostToken != cur.HostToken {
		t.Errorf("stored %+v, %v", stored, err)
	}
}

package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func newCA(t *testing.T) *CA {
	t.Helper()
	ca, keyPEM, err := NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseCA(ca.CertPEM, keyPEM)
	if err != nil || !again.Cert.Equal(ca.Cert) {
		t.Fatalf("CA does not round-trip through PEM: %v", err)
	}
	return ca
}

// serverCert signs a fresh key for address and returns it as a TLS pair.
func serverCert(t *testing.T, ca *CA, address string, now time.Time) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.SignServer(csr, address, now)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCertificate(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair, c
}

func TestCA(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ca := newCA(t)
	if !ca.Cert.IsCA || ca.Cert.NotAfter.Sub(now) < CALifetime-time.Minute {
		t.Errorf("CA: IsCA %v, valid until %v", ca.Cert.IsCA, ca.Cert.NotAfter)
	}
	other := newCA(t)
	if _, err := ParseCA(ca.CertPEM, mustKeyPEM(t)); err == nil {
		t.Error("a CA with a key that is not its own was accepted")
	}
	if _, _, err := func() (*CA, []byte, error) { c, err := ParseCA(other.CertPEM, []byte("junk")); return c, nil, err }(); err == nil {
		t.Error("junk key accepted")
	}
}

func mustKeyPEM(t *testing.T) []byte {
	t.Helper()
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSignServer(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	now := time.Now()
	for _, tc := range []struct {
		address string
		ip      string
		dns     string
	}{
		{"https://10.0.0.7:9090", "10.0.0.7", ""},
		{"https://[fd00::1]:9090", "fd00::1", ""},
		{"https://agent-3.example.com:9090/", "", "agent-3.example.com"},
	} {
		_, c := serverCert(t, ca, tc.address, now)
		name := tc.dns
		if tc.ip != "" {
			name = tc.ip
			if len(c.IPAddresses) != 1 || !c.IPAddresses[0].Equal(net.ParseIP(tc.ip)) || len(c.DNSNames) != 0 {
				t.Errorf("%s: SANs %v %v", tc.address, c.IPAddresses, c.DNSNames)
			}
		} else if len(c.DNSNames) != 1 || c.DNSNames[0] != tc.dns || len(c.IPAddresses) != 0 {
			t.Errorf("%s: SANs %v %v", tc.address, c.IPAddresses, c.DNSNames)
		}
		opts := x509.VerifyOptions{Roots: ca.Pool(), DNSName: name, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		if _, err := c.Verify(opts); err != nil {
			t.Errorf("%s: chain does not verify: %v", tc.address, err)
		}
		opts.DNSName = "elsewhere.example.com"
		if _, err := c.Verify(opts); err == nil {
			t.Errorf("%s: verifies for a name it was not issued for", tc.address)
		}
		opts.DNSName, opts.CurrentTime = name, now.Add(ServerLifetime+time.Hour)
		if _, err := c.Verify(opts); err == nil {
			t.Errorf("%s: still valid after its lifetime", tc.address)
		}
		opts.CurrentTime = now
		opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		if _, err := c.Verify(opts); err == nil {
			t.Errorf("%s: a server certificate is usable for client auth", tc.address)
		}
	}
	// The CSR's own names are ignored, and bad input is refused.
	csr, err := NewCSR(mustKeyPEM(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, csr, address string
	}{
		{"junk csr", "junk", "https://10.0.0.1:1"},
		{"certificate instead of csr", string(ca.CertPEM), "https://10.0.0.1:1"},
		{"no host", string(csr), "https://:9090"},
	} {
		if _, err := ca.SignServer([]byte(tc.csr), tc.address, now); err == nil {
			t.Errorf("%s: signed", tc.name)
		}
	}
}

func TestNeedsRenewal(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	now := time.Now()
	_, c := serverCert(t, ca, "https://10.0.0.1:1", now)
	certPEM := encodeCert(c)
	life := c.NotAfter.Sub(c.NotBefore)
	for _, tc := range []struct {
		at   time.Time
		want bool
	}{
		{now, false},
		{c.NotAfter.Add(-life/3 - time.Hour), false},
		{c.NotAfter.Add(-life/3 + time.Hour), true},
		{c.NotAfter.Add(time.Hour), true},
	} {
		if got := NeedsRenewal(certPEM, tc.at); got != tc.want {
			t.Errorf("NeedsRenewal at %v = %v, want %v", tc.at, got, tc.want)
		}
	}
	if !NeedsRenewal([]byte("junk"), now) {
		t.Error("an unreadable certificate does not need renewal")
	}
}

// TestMutualTLS runs an agent-like server with its issued certificate:
// the control plane's client certificate gets through; no certificate, a
// certificate from another CA, or an agent's server certificate used as a
// client certificate are refused at the handshake.
func TestMutualTLS(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	other := newCA(t)
	now := time.Now()
	srvPair, _ := serverCert(t, ca, "https://127.0.0.1:1", now)
	srvTLS, err := ServerTLS(srvPair, ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Proto)
	}))
	srv.TLS = srvTLS
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()

	clientCert, err := ca.ClientCertificate(now)
	if err != nil {
		t.Fatal(err)
	}
	foreignCert, err := other.ClientCertificate(now)
	if err != nil {
		t.Fatal(err)
	}
	// An agent's certificate has no client-auth usage.
	agentAsClient, _ := serverCert(t, ca, "https://127.0.0.1:1", now)

	get := func(cfg *tls.Config) (string, error) {
		tr := &http.Transport{TLSClientConfig: cfg, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
		defer tr.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}

	body, err := get(ca.ClientTLS(clientCert))
	if err != nil || body != "HTTP/1.1" {
		t.Fatalf("control plane client: %q %v", body, err)
	}
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"no client certificate", &tls.Config{RootCAs: ca.Pool()}},
		{"certificate from another CA", &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{foreignCert}}},
		{"agent certificate as client", &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{agentAsClient}}},
	} {
		if _, err := get(tc.cfg); err == nil {
			t.Errorf("%s: accepted", tc.name)
		} else if !isTLSRefusal(err) {
			t.Errorf("%s: refused, but not at the handshake: %v", tc.name, err)
		}
	}
	// The client, in turn, refuses a server from another CA.
	otherPair, _ := serverCert(t, other, "https://127.0.0.1:1", now)
	otherTLS, err := ServerTLS(otherPair, other.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv2 := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv2.TLS = otherTLS
	srv2.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv2.StartTLS()
	defer srv2.Close()
	tr := &http.Transport{TLSClientConfig: ca.ClientTLS(clientCert)}
	defer tr.CloseIdleConnections()
	if resp, err := (&http.Client{Transport: tr}).Get(srv2.URL); err == nil {
		resp.Body.Close()
		t.Error("client trusted a server from another CA")
	} else {
		var ue x509.UnknownAuthorityError
		if !errors.As(err, &ue) {
			t.Errorf("wrong refusal of a foreign server: %v", err)
		}
	}
}

// isTLSRefusal reports whether err is the server's TLS alert refusing the
// client's certificate during the handshake.
func isTLSRefusal(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error"
}

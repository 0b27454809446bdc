package agent

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"github.com/wrenn/wrenn/internal/pki"
)

// ServerTLS holds the agent's current mutual-TLS configuration, swapped in
// whole when credentials are refreshed, so new connections use the renewed
// certificate without a restart. Until the agent has a certificate every
// handshake is refused.
type ServerTLS struct {
	KeyPath string
	cur     atomic.Pointer[tls.Config]
}

// Update builds the configuration from c's certificate and CA and the key
// at KeyPath. It is an OnCredentials hook.
func (s *ServerTLS) Update(c Credentials) error {
	key, err := os.ReadFile(s.KeyPath)
	if err != nil {
		return fmt.Errorf("read TLS key: %w", err)
	}
	pair, err := tls.X509KeyPair([]byte(c.Certificate), key)
	if err != nil {
		return fmt.Errorf("load the agent's certificate: %w", err)
	}
	cfg, err := pki.ServerTLS(pair, []byte(c.CACertificate))
	if err != nil {
		return err
	}
	s.cur.Store(cfg)
	return nil
}

// Config is the listener's configuration: each handshake takes the
// current certificate; only the control plane's client certificate, signed
// by the CA, is accepted; HTTP/1.1 only.
func (s *ServerTLS) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cfg := s.cur.Load()
			if cfg == nil {
				return nil, errors.New("this agent has no certificate yet (not registered)")
			}
			return cfg, nil
		},
	}
}

package hostclient

import (
	"crypto/tls"
	"net"
	"net/http"
	"time"
)

// NewProxyTransport returns the transport for port traffic (the control
// plane's port proxy to agents' /proxy/ paths), apart from the RPC pool's so
// heavy port traffic (Jupyter, dev servers, downloads) cannot queue behind or
// starve PTY and exec streams. HTTP/1.1 only, which WebSocket upgrades need;
// pooled per agent; bodies pass unchanged (no transparent compression); no
// response timeout, since long polls and event streams are normal there.
// tlsCfg (nil: none) is used for agents whose address is https: the
// internal CA and the control plane's client certificate.
func NewProxyTransport(tlsCfg *tls.Config) *http.Transport {
	return &http.Transport{
		TLSClientConfig: tlsCfg,
		Proxy:           nil,
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     false,
		TLSNextProto:          map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		WriteBufferSize:       64 << 10,
		ReadBufferSize:        64 << 10,
	}
}

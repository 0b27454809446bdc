package cpserver

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// serve runs the control plane with cfg and opts until the test ends and
// returns its base URL.
func serve(t *testing.T, cfg Option, opts ...Option) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan net.Addr, 1)
	opts = append([]Option{cfg, WithStderr(io.Discard), WithReady(func(a net.Addr) { ready <- a })}, opts...)
	go func() { done <- Run(ctx, opts...) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	select {
	case a := <-ready:
		return "http://" + a.String()
	case err := <-done:
		done <- err // for the cleanup
		t.Fatal(err)
		return ""
	}
}

// apiCaller sends requests to base with an API key and decodes the answer
// (the resource, or the error body) into out when not nil; it returns the
// status.
func apiCaller(t *testing.T, base, key string) func(method, path, body string, out any, hdr ...string) int {
	client := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(client.CloseIdleConnections)
	return func(method, path, body string, out any, hdr ...string) int {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("X-API-Key", key)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if out != nil && len(b) > 0 {
			if err := json.Unmarshal(b, out); err != nil {
				t.Fatalf("%s %s: %s", method, path, b)
			}
		}
		return resp.StatusCode
	}
}

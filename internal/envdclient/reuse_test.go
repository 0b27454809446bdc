package envdclient

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/envd/server"
)

// TestExecReusesConnection runs commands against a real envd and checks
// that they share one connection: a stream left unread to its end makes the
// transport close the connection, and every command would pay for a dial.
func TestExecReusesConnection(t *testing.T) {
	ip := startEnvd(t)
	tr, dials := countingTransport(t)
	c := New(tr, ip, "")
	for i := range 3 {
		execEcho(t, c, i)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("3 commands dialled %d connections, want 1", n)
	}
}

// TestClientsKeepOwnConnections checks that clients made from one transport
// do not share connections and that Close ends a client's: a sandbox's
// kept-alive connection must not serve the next sandbox on its address.
func TestClientsKeepOwnConnections(t *testing.T) {
	ip := startEnvd(t)
	tr, dials := countingTransport(t)
	a, b := New(tr, ip, ""), New(tr, ip, "")
	execEcho(t, a, 1)
	execEcho(t, b, 2)
	if n := dials.Load(); n != 2 {
		t.Fatalf("two clients dialled %d connections, want one each", n)
	}
	a.Close()
	execEcho(t, b, 3)
	if n := dials.Load(); n != 2 {
		t.Fatalf("closing one client cost the other its connection (%d dials)", n)
	}
	execEcho(t, a, 4)
	if n := dials.Load(); n != 3 {
		t.Fatalf("a closed client reused a connection (%d dials, want 3)", n)
	}
	a.Close()
	b.Close()
}

// startEnvd serves a real envd on a loopback address of its own (the port
// is fixed) until t ends, and returns the address.
func startEnvd(t *testing.T) net.IP {
	t.Helper()
	ip := net.IPv4(127, byte(10+rand.IntN(200)), byte(rand.IntN(250)), byte(1+rand.IntN(250)))
	ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(Port)))
	if err != nil {
		t.Fatalf("listen on %s: %v", ip, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := server.New(server.Options{ShutdownTimeout: 5 * time.Second})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("serve: %v", err)
		}
	})
	return ip
}

// countingTransport is NewTransport with a count of its dials, which its
// clones share.
func countingTransport(t *testing.T) (*http.Transport, *atomic.Int32) {
	tr := NewTransport()
	t.Cleanup(tr.CloseIdleConnections)
	dials := new(atomic.Int32)
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return dial(ctx, network, addr)
	}
	return tr, dials
}

func execEcho(t *testing.T, c *Client, i int) {
	t.Helper()
	res, err := c.Exec(context.Background(), ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", fmt.Sprintf("echo %d", i)}, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("exec %d: %v", i, err)
	}
	if res.ExitCode != 0 || string(res.Stdout) != fmt.Sprintf("%d\n", i) {
		t.Fatalf("exec %d: exit %d, stdout %q", i, res.ExitCode, res.Stdout)
	}
}

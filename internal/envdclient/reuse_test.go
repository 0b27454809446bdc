package envdclient

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
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
	// Port is fixed, so the envd gets a loopback address of its own.
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

	tr := NewTransport()
	t.Cleanup(tr.CloseIdleConnections)
	var dials atomic.Int32
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return dial(ctx, network, addr)
	}
	c := New(tr, ip, "")
	for i := range 3 {
		res, err := c.Exec(context.Background(), ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", fmt.Sprintf("echo %d", i)}, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatalf("exec %d: %v", i, err)
		}
		if res.ExitCode != 0 || string(res.Stdout) != fmt.Sprintf("%d\n", i) {
			t.Fatalf("exec %d: exit %d, stdout %q", i, res.ExitCode, res.Stdout)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("3 commands dialled %d connections, want 1", n)
	}
}

package portfwd

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// inNetns marks the re-executed test binary that runs inside the throwaway
// network namespace TestForwardLoopbackOnly created for it.
var inNetns = flag.Bool("portfwd.in-netns", false, "internal: the test runs inside its own network namespace")

// extAddr is the sandbox-external address the test configures inside its
// namespace; nothing outside that namespace ever sees it.
const extAddr = "10.123.0.1"

// TestForwardLoopbackOnly runs the scenario in a network namespace of its
// own (unshare --net), with a veth pair carrying extAddr, so it never touches
// the host's interfaces and its listeners cannot collide with the host's.
func TestForwardLoopbackOnly(t *testing.T) {
	if *inNetns {
		forwardScenario(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create a network namespace")
	}
	for _, bin := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("skipping: needs %s (util-linux, iproute2)", bin)
		}
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// The namespace dies with the child process: nothing to clean up.
	cmd := exec.CommandContext(ctx, "unshare", "--net", "--", os.Args[0],
		"-test.run=^TestForwardLoopbackOnly$", "-test.v", "-test.count=1", "-portfwd.in-netns")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("scenario in a new network namespace: %v\n%s", err, out)
	}
	t.Logf("scenario:\n%s", out)
}

func forwardScenario(t *testing.T) {
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "wr0", "type", "veth", "peer", "name", "wr1"},
		{"addr", "add", extAddr + "/32", "dev", "wr0"},
		{"link", "set", "wr0", "up"},
		{"link", "set", "wr1", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}

	v4 := greeter(t, "tcp4", "127.0.0.1:0", "v4")
	v6 := greeter(t, "tcp6", "[::1]:0", "v6")
	wild := greeter(t, "tcp4", "0.0.0.0:0", "wild")
	skipped := greeter(t, "tcp4", "127.0.0.1:0", "skipped")

	// sock_diag, which polls use, sees what /proc/net/tcp{,6} list.
	tbl := newListenerTable(func(err error) { t.Errorf("sock_diag is not usable: %v", err) })
	fromDiag, err := tbl.list(nil)
	tbl.close()
	if err != nil {
		t.Fatalf("list listeners over sock_diag: %v", err)
	}
	fromProc, err := procListeners(nil)
	if err != nil {
		t.Fatalf("list listeners in /proc: %v", err)
	}
	if a, b := addrStrings(fromDiag), addrStrings(fromProc); !slices.Equal(a, b) || len(a) != 4 {
		t.Errorf("sock_diag lists %v, /proc lists %v; want the same 4 listeners", a, b)
	}

	f := New(Options{Interval: 20 * time.Millisecond, SkipPorts: []uint16{port(skipped)}})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		f.Run(ctx)
	}()
	defer func() { cancel(); <-ran }()

	ext := func(ln net.Listener) string { return net.JoinHostPort(extAddr, strconv.Itoa(int(port(ln)))) }
	for _, tc := range []struct {
		ln   net.Listener
		want string
	}{{v4, "v4"}, {v6, "v6"}} {
		waitFor(t, "greeting through "+ext(tc.ln), func() bool { return greeting(ext(tc.ln)) == tc.want })
	}
	// The wildcard listener answers on extAddr itself; the skipped port is
	// not forwarded at all.
	if got := greeting(ext(wild)); got != "wild" {
		t.Errorf("wildcard listener: got %q through %s", got, ext(wild))
	}
	if got := greeting(ext(skipped)); got != "" {
		t.Errorf("skipped port %d was forwarded: got %q", port(skipped), got)
	}
	wantActive := []string{ext(v4), ext(v6)}
	if got := active(f); !slices.Equal(got, sorted(wantActive)) {
		t.Errorf("active forwarders %v, want %v", got, sorted(wantActive))
	}

	// A long-lived connection through the forwarder ends when its service
	// stops listening, and so does the forwarder.
	held, err := net.Dial("tcp", ext(v4))
	if err != nil {
		t.Fatalf("dial %s: %v", ext(v4), err)
	}
	defer held.Close()
	r := bufio.NewReader(held)
	if s, err := r.ReadString('\n'); s != "v4\n" {
		t.Fatalf("held connection: got %q, %v", s, err)
	}
	v4.Close()
	waitFor(t, "forwarder of the closed v4 listener to stop", func() bool {
		return !slices.Contains(active(f), ext(v4)) && greeting(ext(v4)) == ""
	})
	_ = held.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := r.Read(make([]byte, 1)); n != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("connection through the stopped forwarder still open: read %d, %v", n, err)
	}
	if !listensOn(t, ext(v6)) || listensOn(t, ext(v4)) {
		t.Errorf("after closing v4: want a listener on %s only", ext(v6))
	}

	cancel()
	<-ran
	if got := active(f); len(got) != 0 {
		t.Errorf("forwarders left after Run returned: %v", got)
	}
	if listensOn(t, ext(v6)) {
		t.Errorf("%s still listening after Run returned", ext(v6))
	}

	// With nothing listening only on loopback (the skipped port does not
	// count), a poll is what an idle sandbox does twice a second: it must
	// not allocate (nor list interfaces, which would).
	v6.Close()
	if allocs := testing.AllocsPerRun(20, func() {
		if err := f.Poll(); err != nil {
			t.Fatalf("Poll: %v", err)
		}
	}); allocs != 0 {
		t.Errorf("an idle poll allocates %.1f times", allocs)
	}
	if got := active(f); len(got) != 0 {
		t.Errorf("idle polls started forwarders: %v", got)
	}
	f.closeAll()
}

func addrStrings(aps []netip.AddrPort) []string {
	var out []string
	for _, ap := range aps {
		out = append(out, ap.String())
	}
	return sorted(out)
}

// greeter listens on addr and writes msg and a newline to every connection,
// which it then holds open until the test ends, as a service with a
// long-lived client would.
func greeter(t *testing.T, network, addr, msg string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	conns := make(chan net.Conn, 100)
	t.Cleanup(func() {
		ln.Close()
		close(conns)
		for c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, msg)
			conns <- c
		}
	}()
	return ln
}

// greeting dials addr and returns what it said, or "" if it could not.
func greeting(addr string) string {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	s, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(s, "\n")
}

func port(ln net.Listener) uint16 { return uint16(ln.Addr().(*net.TCPAddr).Port) }

func active(f *Forwarder) []string {
	var out []string
	for _, ap := range f.Active() {
		out = append(out, ap.String())
	}
	return sorted(out)
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

// listensOn reports whether the kernel's table has a listener on addr.
func listensOn(t *testing.T, addr string) bool {
	t.Helper()
	ls, err := readTable("/proc/net/tcp")
	if err != nil {
		t.Fatalf("read listeners: %v", err)
	}
	return slices.Contains(ls, netip.MustParseAddrPort(addr))
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

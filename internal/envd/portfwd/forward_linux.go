package portfwd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"
)

// Options configures a Forwarder. Zero values pick working defaults.
type Options struct {
	// Logger receives forwarder starts, stops and failures; nil discards.
	Logger *slog.Logger
	// Interval is how often the listening sockets are read (default 500
	// ms: a sock_diag dump of listeners costs microseconds, and a service
	// is reachable within half a second of listening).
	Interval time.Duration
	// SkipPorts are never forwarded: envd's own port, which already listens
	// on every address.
	SkipPorts []uint16
	// ExternalAddrs lists the addresses to forward on (default: every IPv4
	// address of every up, non-loopback interface, re-read on each poll so
	// an address configured after boot is picked up).
	ExternalAddrs func() ([]netip.Addr, error)
}

// Forwarder polls for loopback-only listeners and forwards to them. Its
// zero value is not usable; call New.
type Forwarder struct {
	log  *slog.Logger
	opts Options
	skip map[uint16]bool

	mu        sync.Mutex
	fwd       map[netip.AddrPort]*forward // by the external address listened on
	table     *listenerTable
	listening []netip.AddrPort // the last poll's listeners; reused by the next
	wg        sync.WaitGroup
}

// forward is one external listener proxying to a loopback service.
type forward struct {
	ln     net.Listener
	target string // host:port dialled for each connection

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  bool
}

// New returns a Forwarder; Run starts it.
func New(opts Options) *Forwarder {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Interval <= 0 {
		opts.Interval = 500 * time.Millisecond
	}
	if opts.ExternalAddrs == nil {
		opts.ExternalAddrs = externalIPv4
	}
	skip := map[uint16]bool{}
	for _, p := range opts.SkipPorts {
		skip[p] = true
	}
	f := &Forwarder{log: opts.Logger, opts: opts, skip: skip, fwd: map[netip.AddrPort]*forward{}}
	f.table = newListenerTable(func(err error) {
		f.log.Debug("port forwarding reads /proc/net/tcp instead of sock_diag", "error", err)
	})
	return f
}

// Run polls until ctx ends, then closes every forwarder and every proxied
// connection and waits for their goroutines before returning.
func (f *Forwarder) Run(ctx context.Context) {
	t := time.NewTicker(f.opts.Interval)
	defer t.Stop()
	var lastErr string
	for {
		if err := f.Poll(); err != nil {
			// Log a failure once until it changes, not every half second.
			if err.Error() != lastErr {
				f.log.Warn("port forwarding poll", "error", err)
			}
			lastErr = err.Error()
		} else {
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			f.closeAll()
			return
		case <-t.C:
		}
	}
}

// Active returns the external addresses being forwarded, for tests and
// diagnostics.
func (f *Forwarder) Active() []netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]netip.AddrPort, 0, len(f.fwd))
	for ap := range f.fwd {
		out = append(out, ap)
	}
	return out
}

// Poll reads the listening sockets once, starts forwarders for new
// loopback-only listeners and stops those whose listener went away.
//
// An idle sandbox polls twice a second for as long as it lives, hundreds
// per host, so the common case (nothing listens only on loopback, nothing
// is forwarded) allocates nothing and asks the kernel nothing beyond the
// listener dump.
func (f *Forwarder) Poll() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	listening, err := f.table.list(f.listening)
	if err != nil {
		return err
	}
	f.listening = listening
	if len(f.fwd) == 0 && !f.anyLoopbackOnly(listening) {
		return nil
	}
	ext, err := f.opts.ExternalAddrs()
	if err != nil {
		return fmt.Errorf("list external addresses: %w", err)
	}

	bound := map[netip.AddrPort]bool{} // listeners that are not ours
	wildcard := map[uint16]bool{}
	loopback := map[uint16]string{} // port → target host
	for _, ap := range listening {
		if _, ours := f.fwd[ap]; ours {
			continue
		}
		bound[ap] = true
		switch a := ap.Addr(); {
		case a.IsUnspecified():
			wildcard[ap.Port()] = true
		case a.IsLoopback():
			// Prefer IPv4 when a service listens on both.
			if host := a.String(); loopback[ap.Port()] == "" || a.Is4() {
				loopback[ap.Port()] = host
			}
		}
	}

	want := map[netip.AddrPort]string{}
	for port, host := range loopback {
		if f.skip[port] || wildcard[port] {
			continue
		}
		for _, a := range ext {
			ap := netip.AddrPortFrom(a, port)
			if !bound[ap] {
				want[ap] = net.JoinHostPort(host, strconv.Itoa(int(port)))
			}
		}
	}
	for ap, fw := range f.fwd {
		if target, ok := want[ap]; !ok || target != fw.target {
			f.log.Debug("stop forwarding", "addr", ap.String(), "target", fw.target)
			fw.close()
			delete(f.fwd, ap)
		}
	}
	for ap, target := range want {
		if _, ok := f.fwd[ap]; ok {
			continue
		}
		ln, err := net.Listen("tcp4", ap.String())
		if err != nil {
			// Someone bound it between the read and now; the next poll sees it.
			f.log.Debug("forward loopback port", "addr", ap.String(), "error", err)
			continue
		}
		fw := &forward{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
		f.fwd[ap] = fw
		f.log.Info("forwarding loopback port", "addr", ap.String(), "target", target)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			fw.serve(f.log, &f.wg)
		}()
	}
	return nil
}

// anyLoopbackOnly reports whether some port that is not skipped has a
// loopback listener and no wildcard one: a candidate for forwarding. It is
// quadratic in the number of listeners, which in a sandbox are a handful.
func (f *Forwarder) anyLoopbackOnly(listening []netip.AddrPort) bool {
	for _, ap := range listening {
		if !ap.Addr().IsLoopback() || f.skip[ap.Port()] {
			continue
		}
		wild := false
		for _, o := range listening {
			if o.Port() == ap.Port() && o.Addr().IsUnspecified() {
				wild = true
				break
			}
		}
		if !wild {
			return true
		}
	}
	return false
}

func (f *Forwarder) closeAll() {
	f.mu.Lock()
	for ap, fw := range f.fwd {
		fw.close()
		delete(f.fwd, ap)
	}
	f.table.close()
	f.mu.Unlock()
	f.wg.Wait()
}

func readTable(name string) ([]netip.AddrPort, error) {
	fh, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	defer fh.Close()
	ls, err := ParseProcNetTCP(fh)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return ls, nil
}

// serve accepts until the listener closes, proxying each connection.
func (fw *forward) serve(log *slog.Logger, wg *sync.WaitGroup) {
	for {
		c, err := fw.ln.Accept()
		if err != nil {
			return
		}
		if !fw.track(c) {
			c.Close()
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer fw.untrack(c)
			fw.proxy(log, c)
		}()
	}
}

func (fw *forward) proxy(log *slog.Logger, c net.Conn) {
	defer c.Close()
	up, err := net.DialTimeout("tcp", fw.target, 5*time.Second)
	if err != nil {
		log.Debug("dial forwarded service", "target", fw.target, "error", err)
		return
	}
	if !fw.track(up) {
		up.Close()
		return
	}
	defer fw.untrack(up)
	defer up.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(up, c)
	}()
	pipe(c, up)
	<-done
}

// pipe copies src to dst and then half-closes dst, so each direction ends
// on its own (HTTP/1.0 clients close their write side first).
func pipe(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	} else {
		_ = dst.Close()
	}
}

func (fw *forward) track(c net.Conn) bool {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.done {
		return false
	}
	fw.conns[c] = struct{}{}
	return true
}

func (fw *forward) untrack(c net.Conn) {
	fw.mu.Lock()
	delete(fw.conns, c)
	fw.mu.Unlock()
}

// close stops accepting and ends every proxied connection: the service they
// reached is gone or envd is stopping.
func (fw *forward) close() {
	fw.mu.Lock()
	fw.done = true
	for c := range fw.conns {
		c.Close()
	}
	fw.mu.Unlock()
	fw.ln.Close()
}

// externalIPv4 returns the IPv4 addresses of up, non-loopback interfaces.
func externalIPv4() ([]netip.Addr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []netip.Addr
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", ifc.Name, err)
		}
		for _, a := range addrs {
			pfx, err := netip.ParsePrefix(a.String())
			if err != nil {
				continue
			}
			if ip := pfx.Addr().Unmap(); ip.Is4() && !ip.IsLoopback() {
				out = append(out, ip)
			}
		}
	}
	return out, nil
}

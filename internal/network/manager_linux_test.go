package network

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Each root test owns a disjoint prefix, interface prefix and CIDR, so the
// tests run in parallel without seeing each other's namespaces, veths or
// chains, and never touch a real agent's "wrenn"/"wv" objects.
type testEnv struct {
	name     string // prefix
	ifPrefix string
	cidr     string
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces, veths and iptables rules")
	}
	for _, bin := range []string{"iptables", "iptables-restore", "iptables-save"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s in PATH", bin)
		}
	}
}

func newTestManager(t *testing.T, env testEnv) *Manager {
	t.Helper()
	requireRoot(t)
	ctx := context.Background()
	cfg := Config{CIDR: mustCIDR(t, env.cidr), Prefix: env.name, IfPrefix: env.ifPrefix}
	m, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		// Whatever a failed test left: remove it all, then the chains.
		fresh := &Manager{cfg: m.cfg, log: m.log, fw: m.fw, slots: map[int]string{}}
		if err := fresh.CleanupOrphans(ctx, nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if err := m.fw.uninstall(ctx); err != nil {
			t.Errorf("uninstall firewall: %v", err)
		}
	})
	return m
}

// requirePermanentNeighbour checks that link (in the calling thread's
// namespace) has a permanent ARP entry for ip pointing at mac.
func requirePermanentNeighbour(link netlink.Link, ip net.IP, mac net.HardwareAddr) error {
	neighs, err := netlink.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	for _, n := range neighs {
		if n.IP.Equal(ip) {
			if n.State != netlink.NUD_PERMANENT || n.HardwareAddr.String() != mac.String() {
				return fmt.Errorf("neighbour %s on %s: state %#x mac %s, want permanent %s", ip, link.Attrs().Name, n.State, n.HardwareAddr, mac)
			}
			return nil
		}
	}
	return fmt.Errorf("no neighbour entry for %s on %s (%+v)", ip, link.Attrs().Name, neighs)
}

func setup(t *testing.T, m *Manager, id string, internet bool) *Link {
	t.Helper()
	l, err := m.Setup(context.Background(), id, internet)
	if err != nil {
		t.Fatalf("Setup(%s): %v", id, err)
	}
	if err := m.EgressReady(context.Background(), l); err != nil {
		t.Fatalf("EgressReady(%s): %v", id, err)
	}
	return l
}

const greeting = "hello from listener\n"

// serve accepts on ln until it is closed, greeting each connection; it
// reports the peers it saw.
func serve(t *testing.T, ln net.Listener) <-chan string {
	t.Helper()
	peers := make(chan string, 16)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case peers <- c.RemoteAddr().String():
			default:
			}
			_, _ = io.WriteString(c, greeting)
			_ = c.Close()
		}
	}()
	return peers
}

// conntrackEntries counts the connections tracked for ip.
func conntrackEntries(ip net.IP) (int, error) {
	flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, f := range flows {
		if f.Forward.SrcIP.Equal(ip) || f.Forward.DstIP.Equal(ip) {
			n++
		}
	}
	return n, nil
}

// listenIn starts a greeting TCP listener inside a namespace.
func listenIn(t *testing.T, nsPath, addr string) (net.Listener, <-chan string) {
	t.Helper()
	var ln net.Listener
	err := inNetNS(nsPath, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s on %s: %v", nsPath, addr, err)
	}
	return ln, serve(t, ln)
}

// reach is dial for connections that must work: a loaded machine may
// lose a first SYN, so it tries a few times with a longer timeout.
func reach(nsPath, addr string) error {
	var err error
	for range 3 {
		if err = dialTimeout(nsPath, addr, 2*time.Second); err == nil {
			return nil
		}
	}
	return err
}

// dial connects to addr and reads the greeting. The socket is created in
// the namespace at nsPath, or in the host's when nsPath is empty. It is for
// connections that must fail: the guard drops, so failure is a timeout.
func dial(nsPath, addr string) error {
	return dialTimeout(nsPath, addr, 700*time.Millisecond)
}

func dialTimeout(nsPath, addr string, timeout time.Duration) error {
	do := func() error {
		c, err := net.DialTimeout("tcp4", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if line != greeting {
			return fmt.Errorf("unexpected greeting %q", line)
		}
		return nil
	}
	if nsPath == "" {
		return do()
	}
	return inNetNS(nsPath, do)
}

func port(ln net.Listener) string {
	return fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
}

func TestSetupReachableFromHost(t *testing.T) {
	t.Parallel()
	m := newTestManager(t, testEnv{"wtreach", "qa", "10.211.1.0/24"})
	ctx := context.Background()
	l := setup(t, m, "sb-reach", false)
	defer func() {
		if err := m.Teardown(ctx, l); err != nil {
			t.Error(err)
		}
	}()

	// The link survives a JSON round trip unchanged (the agent persists it).
	raw, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	var back Link
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if err := m.cfg.checkLink(&back); err != nil || back.SandboxID != l.SandboxID {
		t.Fatalf("round-tripped link %+v: %v", back, err)
	}
	if l.NetNSPath != "/var/run/netns/wtreach-sb-reach" || l.HostIf != "qa0" || l.GuestIP.String() != "10.211.1.2" {
		t.Fatalf("unexpected link %+v", l)
	}

	host, err := netlink.LinkByName(l.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("host veth %s is down", l.HostIf)
	}
	// Each end knows the other's address without ARP.
	var guestMAC net.HardwareAddr
	err = inNetNS(l.NetNSPath, func() error {
		eth, err := netlink.LinkByName(GuestIf)
		if err != nil {
			return err
		}
		guestMAC = eth.Attrs().HardwareAddr
		return requirePermanentNeighbour(eth, l.HostIP, host.Attrs().HardwareAddr)
	})
	if err != nil {
		t.Error(err)
	}
	if err := requirePermanentNeighbour(host, l.GuestIP, guestMAC); err != nil {
		t.Error(err)
	}
	err = inNetNS(l.NetNSPath, func() error {
		for _, name := range []string{"lo", GuestIf} {
			link, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if link.Attrs().Flags&net.FlagUp == 0 {
				return fmt.Errorf("%s is down in the sandbox", name)
			}
		}
		routes, err := netlink.RouteGet(net.ParseIP("198.51.100.9"))
		if err != nil {
			return err
		}
		if len(routes) != 1 || !routes[0].Gw.Equal(l.HostIP) {
			return fmt.Errorf("default route %+v, want via %s", routes, l.HostIP)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// IPv4 only, on both ends: no IPv6 path around the guard.
	if addrs, err := netlink.AddrList(host, netlink.FAMILY_V6); err != nil || len(addrs) != 0 {
		t.Errorf("host veth IPv6 addresses %v, %v", addrs, err)
	}
	err = inNetNS(l.NetNSPath, func() error {
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_V6)
		if err != nil || len(addrs) != 0 {
			return fmt.Errorf("IPv6 addresses in the sandbox: %v, %v", addrs, err)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}

	// envd's case: the host opens a connection into the sandbox; the replies
	// pass the INPUT guard as ESTABLISHED.
	ln, _ := listenIn(t, l.NetNSPath, "0.0.0.0:0")
	if err := reach("", net.JoinHostPort(l.GuestIP.String(), port(ln))); err != nil {
		t.Fatalf("host cannot reach sandbox listener: %v", err)
	}
	if n, err := conntrackEntries(l.GuestIP); err != nil {
		t.Logf("conntrack not listable here, skipping its check: %v", err)
	} else {
		if n == 0 {
			t.Error("no conntrack entry for the connection into the sandbox")
		}
		if err := m.Teardown(ctx, l); err != nil {
			t.Fatal(err)
		}
		if n, _ := conntrackEntries(l.GuestIP); n != 0 {
			t.Errorf("%d conntrack entries of the guest left after Teardown", n)
		}
		l = setup(t, m, "sb-reach", false)
		ln, _ = listenIn(t, l.NetNSPath, "0.0.0.0:0")
	}
	// Loopback inside the sandbox works too.
	if err := reach(l.NetNSPath, "127.0.0.1:"+port(ln)); err != nil {
		t.Fatalf("sandbox loopback: %v", err)
	}
}

func TestSandboxesCannotReachEachOther(t *testing.T) {
	t.Parallel()
	m := newTestManager(t, testEnv{"wtiso", "qb", "10.211.2.0/24"})
	ctx := context.Background()
	a := setup(t, m, "sb-a", true)
	b := setup(t, m, "sb-b", true)
	defer func() {
		for _, l := range []*Link{a, b} {
			if err := m.Teardown(ctx, l); err != nil {
				t.Error(err)
			}
		}
	}()
	ln, _ := listenIn(t, b.NetNSPath, "0.0.0.0:0")
	if err := reach("", net.JoinHostPort(b.GuestIP.String(), port(ln))); err != nil {
		t.Fatalf("control: host cannot reach b: %v", err)
	}
	for _, target := range []net.IP{b.GuestIP, b.HostIP} {
		if err := dial(a.NetNSPath, net.JoinHostPort(target.String(), port(ln))); err == nil {
			t.Errorf("sandbox a reached %s:%s of sandbox b", target, port(ln))
		}
	}
}

func TestSandboxCannotReachHost(t *testing.T) {
	t.Parallel()
	m := newTestManager(t, testEnv{"wthost", "qc", "10.211.3.0/24"})
	ctx := context.Background()
	l := setup(t, m, "sb-h", true)
	other := setup(t, m, "sb-other", false)
	defer func() {
		for _, l := range []*Link{l, other} {
			if err := m.Teardown(ctx, l); err != nil {
				t.Error(err)
			}
		}
	}()
	// A host service on every address, like an agent bound to 0.0.0.0.
	ln, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	serve(t, ln)
	if err := reach("", "127.0.0.1:"+port(ln)); err != nil {
		t.Fatalf("control: host cannot reach its own listener: %v", err)
	}
	for _, target := range []net.IP{l.HostIP, other.HostIP, net.ParseIP("127.0.0.1")} {
		if err := dial(l.NetNSPath, net.JoinHostPort(target.String(), port(ln))); err == nil {
			t.Errorf("sandbox reached the host listener on %s", target)
		}
	}
}

// fakeInternet creates a namespace standing in for the outside world: a
// veth from the host with hostCIDR's .1 on the host side and .2 inside,
// and a greeting listener on .2. No traffic leaves this machine.
func fakeInternet(t *testing.T, name, hostIf, cidr string) (addr string, peers <-chan string) {
	t.Helper()
	path := filepath.Join(NetNSDir, name)
	_ = deleteNetNS(path)
	_ = deleteLink(hostIf)
	if err := createNetNS(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = deleteLink(hostIf)
		_ = deleteNetNS(path)
	})
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}); err != nil {
		t.Fatal(err)
	}
	ipn := mustCIDR(t, cidr)
	hostAddr, peerAddr := slotAddrs(ipn, 0) // .1 and .2
	link, err := netlink.LinkByName(hostIf)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: hostAddr, Mask: ipn.Mask}}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: peerAddr, Mask: ipn.Mask}}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		t.Fatal(err)
	}
	// Safety: only go on if the host routes the address into our veth.
	routes, err := netlink.RouteGet(peerAddr)
	if err != nil || len(routes) != 1 || routes[0].LinkIndex != link.Attrs().Index {
		t.Fatalf("route to %s does not go through %s (%+v, %v); refusing to send traffic", peerAddr, hostIf, routes, err)
	}
	ln, peers := listenIn(t, path, net.JoinHostPort(peerAddr.String(), "0"))
	if err := reach("", ln.Addr().String()); err != nil {
		t.Fatalf("control: host cannot reach fake internet %s: %v", ln.Addr(), err)
	}
	<-peers
	return ln.Addr().String(), peers
}

func TestEgress(t *testing.T) {
	t.Parallel()
	m := newTestManager(t, testEnv{"wtegr", "qd", "10.211.4.0/24"})
	ctx := context.Background()
	// 198.18.213.0/24 (benchmarking range, public as far as the guard is
	// concerned) as the "internet", 172.31.213.0/24 as a private network
	// next to the host; both live only in namespaces made here.
	inet, peers := fakeInternet(t, "wtegr-inet", "zqdinet", "198.18.213.0/24")
	private, _ := fakeInternet(t, "wtegr-priv", "zqdpriv", "172.31.213.0/24")

	online := setup(t, m, "sb-online", true)
	offline := setup(t, m, "sb-offline", false)
	defer func() {
		for _, l := range []*Link{online, offline} {
			if err := m.Teardown(ctx, l); err != nil {
				t.Error(err)
			}
		}
	}()

	if err := reach(online.NetNSPath, inet); err != nil {
		t.Fatalf("sandbox with internet cannot reach %s: %v", inet, err)
	}
	// NAT: the outside sees the host's address, not the sandbox's.
	if from := <-peers; !strings.HasPrefix(from, "198.18.213.1:") {
		t.Errorf("outside saw the connection from %s, want the host's 198.18.213.1", from)
	}
	if err := dial(offline.NetNSPath, inet); err == nil {
		t.Errorf("sandbox without internet reached %s", inet)
	}
	if err := dial(online.NetNSPath, private); err == nil {
		t.Errorf("sandbox reached private address %s", private)
	}
}

var saveCounters = regexp.MustCompile(`\[\d+:\d+\]`)

// firewallState is every iptables-save line about env's chains or
// interfaces, counters removed.
func firewallState(t *testing.T, env testEnv) []string {
	t.Helper()
	out, err := exec.Command("iptables-save").Output()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, strings.ToUpper(env.name)) || strings.Contains(line, env.name+":") ||
			strings.Contains(line, " "+env.ifPrefix) {
			lines = append(lines, saveCounters.ReplaceAllString(line, ""))
		}
	}
	return lines
}

// leftovers lists env's namespaces and veths present on the host.
func leftovers(t *testing.T, env testEnv) []string {
	t.Helper()
	var found []string
	entries, _ := os.ReadDir(NetNSDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), env.name+"-") {
			found = append(found, "netns "+e.Name())
		}
	}
	links, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Fatal(err)
	}
	for _, l := range links {
		if _, ok := slotOfIf(env.ifPrefix, l.Attrs().Name); ok {
			found = append(found, "link "+l.Attrs().Name)
		}
	}
	// /var/run is usually a symlink; mountinfo shows the resolved path.
	dir, err := filepath.EvalSymlinks(NetNSDir)
	if err != nil {
		t.Fatal(err)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/"+env.name+"-") {
			found = append(found, "mount "+filepath.Base(f[4]))
		}
	}
	return found
}

func TestTeardownLeavesNothingAndSlotsAreReused(t *testing.T) {
	t.Parallel()
	env := testEnv{"wttear", "qe", "10.211.5.0/24"}
	m := newTestManager(t, env)
	ctx := context.Background()
	before := firewallState(t, env)
	if got := leftovers(t, env); len(got) != 0 {
		t.Fatalf("leftovers before the test: %q", got)
	}

	a := setup(t, m, "sb-a", true)
	b := setup(t, m, "sb-b", false)
	if a.Slot != 0 || b.Slot != 1 {
		t.Fatalf("slots %d, %d; want 0, 1", a.Slot, b.Slot)
	}
	if during := firewallState(t, env); len(during) != len(before)+1 {
		t.Errorf("expected exactly one egress rule more while running, got\n%s", strings.Join(during, "\n"))
	}
	if _, err := m.Setup(ctx, "sb-a", false); !errors.Is(err, ErrConflict) {
		t.Errorf("second Setup of sb-a = %v, want ErrConflict", err)
	}

	if err := m.Teardown(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := m.Teardown(ctx, a); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
	c := setup(t, m, "sb-c", true)
	if c.Slot != 0 || !c.GuestIP.Equal(a.GuestIP) {
		t.Errorf("freed slot 0 not reused: got slot %d (%s)", c.Slot, c.GuestIP)
	}
	ln, _ := listenIn(t, c.NetNSPath, "0.0.0.0:0")
	if err := reach("", net.JoinHostPort(c.GuestIP.String(), port(ln))); err != nil {
		t.Fatalf("reused slot does not work: %v", err)
	}
	for _, l := range []*Link{b, c} {
		if err := m.Teardown(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	if got := leftovers(t, env); len(got) != 0 {
		t.Errorf("Teardown left %q", got)
	}
	if after := firewallState(t, env); !slices.Equal(before, after) {
		t.Errorf("firewall changed:\nbefore:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
}

func TestCleanupOrphansAfterRestart(t *testing.T) {
	t.Parallel()
	env := testEnv{"wtorph", "qf", "10.211.6.0/24"}
	m := newTestManager(t, env)
	ctx := context.Background()
	before := firewallState(t, env)
	keep := setup(t, m, "sb-keep", true)
	setup(t, m, "sb-gone1", true)
	setup(t, m, "sb-gone2", false)

	// The agent restarts: a new manager knows only what it adopts.
	m2, err := New(ctx, m.cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The round trip through JSON is what the agent's state file does.
	raw, _ := json.Marshal(keep)
	var adopted Link
	if err := json.Unmarshal(raw, &adopted); err != nil {
		t.Fatal(err)
	}
	// Cleanup before and after adoption keeps exactly the kept sandbox:
	// before, it is recognised through its namespace.
	want := []string{"link qf0", "mount wtorph-sb-keep", "netns wtorph-sb-keep"}
	for _, adopt := range []bool{false, true} {
		if adopt {
			if err := m2.Adopt(ctx, &adopted); err != nil {
				t.Fatalf("Adopt: %v", err)
			}
		}
		if err := m2.CleanupOrphans(ctx, map[string]bool{"sb-keep": true}); err != nil {
			t.Fatalf("CleanupOrphans: %v", err)
		}
		got := leftovers(t, env)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("after cleanup (adopted %v) found %q, want %q", adopt, got, want)
		}
	}
	if during := firewallState(t, env); len(during) != len(before)+1 || !strings.Contains(strings.Join(during, "\n"), "wtorph:sb-keep") {
		t.Errorf("want only the kept sandbox's egress rule added, got\n%s", strings.Join(during, "\n"))
	}
	ln, _ := listenIn(t, keep.NetNSPath, "0.0.0.0:0")
	if err := reach("", net.JoinHostPort(keep.GuestIP.String(), port(ln))); err != nil {
		t.Errorf("kept sandbox unreachable after cleanup: %v", err)
	}
	// The adopted slot is not handed out again; the orphans' slots are.
	next := setup(t, m2, "sb-next", false)
	if next.Slot != 1 {
		t.Errorf("new sandbox got slot %d, want 1", next.Slot)
	}
	for _, l := range []*Link{&adopted, next} {
		if err := m2.Teardown(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	if after := firewallState(t, env); !slices.Equal(before, after) {
		t.Errorf("firewall changed:\nbefore:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
	if err := m2.Adopt(ctx, &adopted); err == nil {
		t.Error("Adopt of a torn-down link succeeded")
	}
}

func TestConcurrentSetupTeardown(t *testing.T) {
	t.Parallel()
	env := testEnv{"wtconc", "qg", "10.211.7.0/24"}
	m := newTestManager(t, env)
	ctx := context.Background()
	before := firewallState(t, env)
	const n = 20
	links := make([]*Link, n)
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Go(func() {
			l, err := m.Setup(ctx, fmt.Sprintf("sb-c%d", i), i%2 == 0)
			if err != nil {
				errs <- err
				return
			}
			links[i] = l
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, l := range links {
		if seen[l.Slot] {
			t.Fatalf("slot %d given twice", l.Slot)
		}
		seen[l.Slot] = true
	}
	if got := len(leftovers(t, env)); got != 3*n {
		t.Errorf("%d namespaces, pins and veths while running, want %d", got, 3*n)
	}
	errs = make(chan error, n)
	for _, l := range links {
		wg.Go(func() {
			if err := m.Teardown(ctx, l); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := leftovers(t, env); len(got) != 0 {
		t.Errorf("left %q", got)
	}
	if after := firewallState(t, env); !slices.Equal(before, after) {
		t.Errorf("firewall changed:\nbefore:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
}

func BenchmarkSetupTeardown(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	ctx := context.Background()
	_, cidr, _ := net.ParseCIDR("10.211.8.0/24")
	m, err := New(ctx, Config{CIDR: cidr, Prefix: "wtbench", IfPrefix: "qh"})
	if err != nil {
		b.Fatal(err)
	}
	defer m.fw.uninstall(ctx)
	for i := 0; b.Loop(); i++ {
		l, err := m.Setup(ctx, fmt.Sprintf("sb-b%d", i), i%2 == 0)
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Teardown(ctx, l); err != nil {
			b.Fatal(err)
		}
	}
}

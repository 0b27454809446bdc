package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Manager creates and removes sandbox networks on this host. It is safe for
// concurrent use; operations on one sandbox must not overlap (the agent
// serialises them).
type Manager struct {
	cfg Config
	log *slog.Logger
	fw  *firewall

	// opMu lets Setup, Teardown and Adopt run together but never while
	// CleanupOrphans decides what is orphaned, so a sandbox being set up is
	// never mistaken for a leftover.
	opMu sync.RWMutex

	mu    sync.Mutex
	slots map[int]string // slot → sandbox id, for slots in use
	// egressWaits holds, per sandbox, the wait for an egress rule that
	// Setup queued and EgressReady or Teardown has not waited for yet.
	egressWaits map[string]func() error

	egress egressQueue
}

// egressQueue batches the egress rules of concurrent Setups: every iptables
// run reloads the whole ruleset, so twenty creates at once each adding their
// own rule spent most of their time queued behind each other. A Setup whose
// request finds no flush running starts one; requests that arrive while it
// runs go together in the next.
type egressQueue struct {
	mu      sync.Mutex
	pending []egressRequest
	busy    bool
}

type egressRequest struct {
	link *Link
	done chan error
}

// egressTimeout bounds one flush of the egress queue.
const egressTimeout = 30 * time.Second

// requestEgress queues l's egress rule and returns a function that waits for
// the outcome (and may be called more than once). The rule is added whether
// or not anyone waits, so a caller that gives up must still wait before it
// revokes.
func (m *Manager) requestEgress(l *Link) func() error {
	done := make(chan error, 1)
	q := &m.egress
	q.mu.Lock()
	q.pending = append(q.pending, egressRequest{link: l, done: done})
	start := !q.busy
	q.busy = true
	q.mu.Unlock()
	if start {
		go m.flushEgress()
	}
	return sync.OnceValue(func() error { return <-done })
}

// flushEgress adds the queued rules, one batch at a time, until the queue
// is empty. A failed batch is retried rule by rule, so one bad rule fails
// only its own sandbox.
func (m *Manager) flushEgress() {
	q := &m.egress
	for {
		q.mu.Lock()
		batch := q.pending
		q.pending = nil
		if len(batch) == 0 {
			q.busy = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), egressTimeout)
		links := make([]*Link, len(batch))
		for i, r := range batch {
			links[i] = r.link
		}
		err := m.fw.allowAll(ctx, links)
		for _, r := range batch {
			if err != nil && len(batch) > 1 {
				r.done <- m.fw.allow(ctx, r.link)
				continue
			}
			r.done <- err
		}
		cancel()
	}
}

// New prepares the host for sandbox networks: IPv4 forwarding on, the netns
// directory shared, and the guard and NAT chains installed or refreshed. It
// is idempotent, so a restarted agent calls it again without duplicating
// rules and without dropping the egress rules of sandboxes it will adopt.
// It fails with ErrConflict when an interface not of this manager already
// has an address in the CIDR (another agent's range). Needs root.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, fw: newFirewall(cfg), slots: map[int]string{}}
	if err := checkCIDRFree(cfg); err != nil {
		return nil, err
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return nil, fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	if err := ensureNetNSDir(); err != nil {
		return nil, err
	}
	if err := m.fw.install(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// Setup gives sandboxID a network: the lowest free slot, a namespace named
// <prefix>-<sandboxID> pinned under /var/run/netns, a veth pair (host end
// <ifprefix><slot>, guest end eth0 inside), addresses, lo and eth0 up, a
// default route via the host end, and an egress rule when allowInternet,
// which may still be going in when Setup returns: EgressReady waits for it.
// On error nothing of it is left behind.
func (m *Manager) Setup(ctx context.Context, sandboxID string, allowInternet bool) (_ *Link, err error) {
	if !sandboxIDRe.MatchString(sandboxID) {
		return nil, fmt.Errorf("%w: sandbox id %q", ErrInvalid, sandboxID)
	}
	m.opMu.RLock()
	defer m.opMu.RUnlock()
	slot, err := m.take(sandboxID)
	if err != nil {
		return nil, err
	}
	l := m.cfg.linkFor(sandboxID, slot, allowInternet)
	log := m.log.With("sandbox_id", sandboxID)

	// Undo in reverse order on failure, detached from a cancelled ctx.
	var undo []func(context.Context) error
	defer func() {
		if err == nil {
			return
		}
		cctx := context.WithoutCancel(ctx)
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](cctx); uerr != nil {
				log.Warn("network setup cleanup failed", "err", uerr)
			}
		}
	}()
	undo = append(undo, func(context.Context) error { m.free(slot, sandboxID); return nil })

	// The egress rule names only the slot's interface and address, so it
	// is queued first and added while the namespace and veth are made,
	// and while the caller starts the sandbox (see EgressReady).
	if allowInternet {
		egressDone := m.requestEgress(l)
		m.putEgressWait(sandboxID, egressDone)
		undo = append(undo, func(ctx context.Context) error {
			m.takeEgressWait(sandboxID)
			if egressDone() != nil {
				return nil // not added: nothing to revoke
			}
			return m.fw.revoke(ctx, func(id string) bool { return id != sandboxID })
		})
	}

	if err := createNetNS(l.NetNSPath); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("create netns of %s: %w (left over by an earlier agent? run CleanupOrphans): %w", sandboxID, ErrConflict, err)
		}
		return nil, fmt.Errorf("create netns of %s: %w", sandboxID, err)
	}
	undo = append(undo, func(context.Context) error { return deleteNetNS(l.NetNSPath) })

	ns, err := netns.GetFromPath(l.NetNSPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", l.NetNSPath, err)
	}
	defer ns.Close()
	inside, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", l.NetNSName, err)
	}
	defer inside.Close()

	// The peer is born inside the namespace, so "eth0" never collides with a
	// host interface.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: l.HostIf},
		PeerName:      GuestIf,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create veth %q: %w (left over by an earlier agent? run CleanupOrphans): %w", l.HostIf, ErrConflict, err)
		}
		return nil, fmt.Errorf("create veth %q: %w", l.HostIf, err)
	}
	undo = append(undo, func(context.Context) error { return deleteLink(l.HostIf) })

	if err := m.configureHost(l); err != nil {
		return nil, err
	}
	if err := configureGuest(inside, l); err != nil {
		return nil, err
	}
	if err := pinNeighbours(inside, l); err != nil {
		return nil, err
	}
	log.Debug("sandbox network up", "host_if", l.HostIf, "guest_ip", l.GuestIP.String(), "allow_internet", allowInternet)
	return l, nil
}

func (m *Manager) configureHost(l *Link) error {
	host, err := netlink.LinkByName(l.HostIf)
	if err != nil {
		return fmt.Errorf("find veth %q: %w", l.HostIf, err)
	}
	// Before the link is up, so it never gets an IPv6 link-local address.
	if err := disableIPv6(l.HostIf); err != nil {
		return err
	}
	// Strict reverse-path filtering: packets from this veth must come from
	// its guest's /30.
	rp := filepath.Join("/proc/sys/net/ipv4/conf", l.HostIf, "rp_filter")
	if err := os.WriteFile(rp, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable rp_filter on %q: %w", l.HostIf, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: l.HostIP, Mask: slotMask}}
	if err := netlink.AddrAdd(host, addr); err != nil {
		return fmt.Errorf("address %s on %q: %w", addr.IPNet, l.HostIf, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("bring up %q: %w", l.HostIf, err)
	}
	return nil
}

func configureGuest(h *netlink.Handle, l *Link) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", l.NetNSName, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring up lo in %s: %w", l.NetNSName, err)
	}
	eth, err := h.LinkByName(GuestIf)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", GuestIf, l.NetNSName, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: l.GuestIP, Mask: slotMask}}
	if err := h.AddrAdd(eth, addr); err != nil {
		return fmt.Errorf("address %s on %s in %s: %w", addr.IPNet, GuestIf, l.NetNSName, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bring up %s in %s: %w", GuestIf, l.NetNSName, err)
	}
	def := &netlink.Route{
		LinkIndex: eth.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw:        l.HostIP,
	}
	if err := h.RouteAdd(def); err != nil {
		return fmt.Errorf("default route via %s in %s: %w", l.HostIP, l.NetNSName, err)
	}
	return nil
}

// EgressReady waits until the egress rule Setup queued for l is in place
// and reports whether it could be added; a sandbox without internet access,
// or one already waited for, is ready at once. Setup returns before the rule
// is in, so that adding it (an iptables run) overlaps the sandbox's start;
// the caller calls EgressReady before it hands the sandbox out, and tears
// the network down when it fails.
func (m *Manager) EgressReady(ctx context.Context, l *Link) error {
	wait := m.takeEgressWait(l.SandboxID)
	if wait == nil {
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- wait() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("egress of %s: %w", l.SandboxID, err)
		}
		return nil
	case <-ctx.Done():
		// Teardown waits for the rule before it revokes it.
		m.putEgressWait(l.SandboxID, wait)
		return fmt.Errorf("egress of %s: %w", l.SandboxID, ctx.Err())
	}
}

func (m *Manager) putEgressWait(sandboxID string, wait func() error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.egressWaits == nil {
		m.egressWaits = map[string]func() error{}
	}
	m.egressWaits[sandboxID] = wait
}

// takeEgressWait removes and returns sandboxID's pending egress wait.
func (m *Manager) takeEgressWait(sandboxID string) func() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	wait := m.egressWaits[sandboxID]
	delete(m.egressWaits, sandboxID)
	return wait
}

// pinNeighbours adds permanent ARP entries for the two ends of the veth
// pair, each in the other's namespace. The first packets of a sandbox's
// life (the agent's connect to envd) otherwise wait for ARP, and a request
// sent while the freshly raised veth still drops traffic (its queue is
// attached only when the kernel's link watcher, under the RTNL lock that
// twenty concurrent creates contend for, handles the carrier change) is
// retried a second later. The entries go with the veth.
func pinNeighbours(inside *netlink.Handle, l *Link) error {
	host, err := netlink.LinkByName(l.HostIf)
	if err != nil {
		return fmt.Errorf("find veth %q: %w", l.HostIf, err)
	}
	guest, err := inside.LinkByName(GuestIf)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", GuestIf, l.NetNSName, err)
	}
	err = netlink.NeighSet(&netlink.Neigh{
		LinkIndex: host.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: l.GuestIP, HardwareAddr: guest.Attrs().HardwareAddr,
	})
	if err != nil {
		return fmt.Errorf("neighbour %s on %q: %w", l.GuestIP, l.HostIf, err)
	}
	err = inside.NeighSet(&netlink.Neigh{
		LinkIndex: guest.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: l.HostIP, HardwareAddr: host.Attrs().HardwareAddr,
	})
	if err != nil {
		return fmt.Errorf("neighbour %s on %s in %s: %w", l.HostIP, GuestIf, l.NetNSName, err)
	}
	return nil
}

// Teardown removes everything Setup made for link: egress rule, veth pair,
// namespace pin, conntrack entries; then frees the slot. It is idempotent:
// parts already gone are skipped. The slot stays taken when the veth could
// not be removed, so it is not handed out while still in use.
func (m *Manager) Teardown(ctx context.Context, l *Link) error {
	if err := m.cfg.checkLink(l); err != nil {
		return err
	}
	m.opMu.RLock()
	defer m.opMu.RUnlock()
	// A rule still going in would land after the revoke below.
	if wait := m.takeEgressWait(l.SandboxID); wait != nil {
		_ = wait()
	}
	var errs []error
	if err := m.fw.revoke(ctx, func(id string) bool { return id != l.SandboxID }); err != nil {
		errs = append(errs, err)
	}
	vethErr := deleteLink(l.HostIf)
	if vethErr != nil {
		errs = append(errs, vethErr)
	}
	if err := deleteNetNS(l.NetNSPath); err != nil {
		errs = append(errs, err)
	}
	m.flushConntrack(l)
	if vethErr == nil {
		m.free(l.Slot, l.SandboxID)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tear down network of %s: %w", l.SandboxID, err)
	}
	m.log.Debug("sandbox network down", "sandbox_id", l.SandboxID, "host_if", l.HostIf)
	return nil
}

// flushConntrack forgets connections of the guest address, so a later
// sandbox in the same slot cannot ride on its predecessor's entries. Best
// effort: without nf_conntrack_netlink there is nothing to flush with.
func (m *Manager) flushConntrack(l *Link) {
	var src, dst netlink.ConntrackFilter
	if err := src.AddIP(netlink.ConntrackOrigSrcIP, l.GuestIP); err != nil {
		return
	}
	if err := dst.AddIP(netlink.ConntrackOrigDstIP, l.GuestIP); err != nil {
		return
	}
	if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, &src, &dst); err != nil {
		m.log.Debug("flush conntrack entries", "sandbox_id", l.SandboxID, "err", err)
	}
}

// Adopt takes back a link Setup made before the agent restarted: its slot
// is marked used and its egress rule restored if it went missing. It fails
// when the namespace or veth no longer exist, so the agent learns that the
// sandbox lost its network.
func (m *Manager) Adopt(ctx context.Context, l *Link) error {
	if err := m.cfg.checkLink(l); err != nil {
		return err
	}
	m.opMu.RLock()
	defer m.opMu.RUnlock()
	if _, err := os.Stat(l.NetNSPath); err != nil {
		return fmt.Errorf("adopt network of %s: %w", l.SandboxID, err)
	}
	if _, err := netlink.LinkByName(l.HostIf); err != nil {
		return fmt.Errorf("adopt network of %s: find veth %q: %w", l.SandboxID, l.HostIf, err)
	}
	m.mu.Lock()
	if owner, ok := m.slots[l.Slot]; ok && owner != l.SandboxID {
		m.mu.Unlock()
		return fmt.Errorf("adopt network of %s: %w: slot %d belongs to %s", l.SandboxID, ErrConflict, l.Slot, owner)
	}
	m.slots[l.Slot] = l.SandboxID
	m.mu.Unlock()
	if l.AllowInternet {
		if err := m.fw.allow(ctx, l); err != nil {
			return err
		}
	}
	return nil
}

// CleanupOrphans removes namespaces, host veths and egress rules left by
// sandboxes that are neither in keep nor currently held by this Manager
// (Setup or Adopt). A kept sandbox's veth is recognised through its
// namespace even before it is adopted. It waits for running Setup and
// Teardown calls and holds new ones back while it runs.
func (m *Manager) CleanupOrphans(ctx context.Context, keep map[string]bool) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	held := map[string]bool{}
	heldSlots := map[int]bool{}
	for slot, id := range m.slots {
		held[id] = true
		heldSlots[slot] = true
	}
	m.mu.Unlock()
	live := func(id string) bool { return keep[id] || held[id] }

	var errs []error
	if err := m.fw.revoke(ctx, live); err != nil {
		errs = append(errs, err)
	}

	entries, err := os.ReadDir(NetNSDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list %s: %w", NetNSDir, err))
	}
	// Host ends of the veths whose sandbox is kept: the guest end's
	// IFLA_LINK is its peer's index in our namespace.
	keptIfIndex := map[int]bool{}
	for _, e := range entries {
		if id, ok := strings.CutPrefix(e.Name(), m.cfg.Prefix+"-"); ok && live(id) {
			if idx, err := peerIndex(filepath.Join(NetNSDir, e.Name())); err == nil {
				keptIfIndex[idx] = true
			}
		}
	}

	links, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		errs = append(errs, fmt.Errorf("list links: %w", err))
	}
	for _, link := range links {
		slot, ok := slotOfIf(m.cfg.IfPrefix, link.Attrs().Name)
		if !ok || link.Type() != "veth" || heldSlots[slot] || keptIfIndex[link.Attrs().Index] {
			continue
		}
		if err := deleteLink(link.Attrs().Name); err != nil {
			errs = append(errs, err)
			continue
		}
		m.log.Info("removed orphan veth", "host_if", link.Attrs().Name)
	}

	for _, e := range entries {
		id, ok := strings.CutPrefix(e.Name(), m.cfg.Prefix+"-")
		if !ok || live(id) {
			continue
		}
		if err := deleteNetNS(filepath.Join(NetNSDir, e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		m.log.Info("removed orphan netns", "sandbox_id", id)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up orphan networks: %w", err)
	}
	return nil
}

// peerIndex returns the host-side interface index of the guest veth in the
// namespace at path.
func peerIndex(path string) (int, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return 0, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	eth, err := h.LinkByName(GuestIf)
	if err != nil {
		return 0, err
	}
	if eth.Attrs().ParentIndex == 0 {
		return 0, fmt.Errorf("%s in %s has no peer", GuestIf, path)
	}
	return eth.Attrs().ParentIndex, nil
}

// take reserves the lowest free slot for sandboxID.
func (m *Manager) take(sandboxID string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range m.slots {
		if id == sandboxID {
			return 0, fmt.Errorf("%w: sandbox %s already has a network", ErrConflict, sandboxID)
		}
	}
	n := slotCount(m.cfg.CIDR)
	for s := range n {
		if _, used := m.slots[s]; !used {
			m.slots[s] = sandboxID
			return s, nil
		}
	}
	return 0, fmt.Errorf("%w: all %d slots of %s are in use", ErrExhausted, n, m.cfg.CIDR)
}

// free releases slot if sandboxID still holds it.
func (m *Manager) free(slot int, sandboxID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.slots[slot] == sandboxID {
		delete(m.slots, slot)
	}
}

// deleteLink removes a host interface (and, for a veth, its peer); missing
// is fine.
func deleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find link %q: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %q: %w", name, err)
	}
	return nil
}

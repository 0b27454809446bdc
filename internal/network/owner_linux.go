package network

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// checkCIDRFree fails when an interface that is not one of this manager's
// veths holds an address inside cfg.CIDR. Another agent on the host, or the
// host's own network, already routes that range: sandboxes given addresses
// in it would be unreachable or reach the wrong side, so the agent must not
// start with it.
func checkCIDRFree(cfg Config) error {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list host addresses: %w", err)
	}
	links, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list host interfaces: %w", err)
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	for _, a := range addrs {
		if a.IPNet == nil || !cfg.CIDR.Contains(a.IP) {
			continue
		}
		name := names[a.LinkIndex]
		if _, ours := slotOfIf(cfg.IfPrefix, name); ours {
			continue // a sandbox of ours, kept across a restart
		}
		return fmt.Errorf("%w: sandbox range %s is already in use on this host: interface %q has %s; give every agent on a host its own range (WRENN_SANDBOX_CIDR)",
			ErrConflict, cfg.CIDR, name, a.IPNet)
	}
	return nil
}

// RemoveGuard removes this manager's iptables chains and the rules that hook
// them into the built-in ones. An agent calls it when it stops with no
// sandbox left: without veths of this manager the chains guard nothing, and
// leaving them would pile up one set per agent directory ever used. It
// refuses with ErrConflict while a slot is held or a veth of this manager
// still exists. The manager must not set up links afterwards.
func (m *Manager) RemoveGuard(ctx context.Context) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	held := len(m.slots)
	m.mu.Unlock()
	if held > 0 {
		return fmt.Errorf("%w: %d sandbox networks are still up", ErrConflict, held)
	}
	links, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list host interfaces: %w", err)
	}
	for _, l := range links {
		if _, ours := slotOfIf(m.cfg.IfPrefix, l.Attrs().Name); ours {
			return fmt.Errorf("%w: veth %q is still there", ErrConflict, l.Attrs().Name)
		}
	}
	return m.fw.uninstall(ctx)
}

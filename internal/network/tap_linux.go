package network

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
)

// TAPTxQueueLen is a TAP device's transmit queue: the kernel's default of
// 1000 packets drops bursts a microVM's virtio-net sends faster than the
// host forwards them.
const TAPTxQueueLen = 5000

// TAP is a persistent TAP device in a sandbox's network namespace, for the
// microVM runtimes (Firecracker, QEMU): their VMM attaches to it by name
// and the sandbox's namespace routes between it and the veth.
type TAP struct {
	Name      string
	NetNSPath string
	Index     int
}

// CreateTAP creates the TAP device name in the network namespace pinned at
// netnsPath, owned by uid and gid (the VMM's user, which may then attach
// without CAP_NET_ADMIN), with TAPTxQueueLen, no packet information header,
// and up. A device of that name already there is an error, not taken
// over. It is released with DeleteTAP, or with the namespace. On error
// nothing is left behind.
func CreateTAP(netnsPath, name string, uid, gid uint32) (*TAP, error) {
	if err := validIfName(name); err != nil {
		return nil, err
	}
	t := &TAP{Name: name, NetNSPath: netnsPath}
	err := withNetNSHandle(netnsPath, func(h *netlink.Handle) error {
		link := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_TUN_EXCL,
			Owner:     uid,
			Group:     gid,
		}
		if err := h.LinkAdd(link); err != nil {
			return fmt.Errorf("create tap %s: %w", name, err)
		}
		err := h.LinkSetTxQLen(link, TAPTxQueueLen)
		if err == nil {
			err = h.LinkSetUp(link)
		}
		if err != nil {
			return errors.Join(fmt.Errorf("set up tap %s: %w", name, err), h.LinkDel(link))
		}
		t.Index = link.Attrs().Index
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// DeleteTAP removes t; a device already gone is not an error.
func DeleteTAP(t *TAP) error {
	return withNetNSHandle(t.NetNSPath, func(h *netlink.Handle) error {
		link, err := h.LinkByName(t.Name)
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("find tap %s: %w", t.Name, err)
		}
		if err := h.LinkDel(link); err != nil {
			return fmt.Errorf("delete tap %s: %w", t.Name, err)
		}
		return nil
	})
}

// validIfName accepts what the kernel takes as an interface name.
func validIfName(name string) error {
	switch {
	case name == "" || len(name) > 15:
		return fmt.Errorf("%w: interface name %q must be 1 to 15 bytes", ErrInvalid, name)
	case name == "." || name == "..", strings.ContainsAny(name, "/: \t\n\x00"):
		return fmt.Errorf("%w: interface name %q has a character the kernel refuses", ErrInvalid, name)
	}
	return nil
}

// withNetNSHandle runs fn with a netlink handle made inside the namespace
// at path, on a thread that has entered it (inNetNS): a TAP belongs to the
// namespace of the thread that opens /dev/net/tun, which a handle made with
// NewHandleAt does not change.
func withNetNSHandle(path string, fn func(*netlink.Handle) error) error {
	return inNetNS(path, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return fmt.Errorf("netlink in %s: %w", path, err)
		}
		defer h.Close()
		return fn(h)
	})
}

package network

import (
	"errors"
	"net"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestCreateTAP(t *testing.T) {
	requireRoot(t)
	if err := ensureNetNSDir(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(NetNSDir, "wrenn-taptest")
	_ = deleteNetNS(path)
	if err := createNetNS(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteNetNS(path) })

	tap, err := CreateTAP(path, "tap0", 1000, 1000)
	if err != nil {
		t.Fatal(err)
	}
	err = withNetNSHandle(path, func(h *netlink.Handle) error {
		link, err := h.LinkByName("tap0")
		if err != nil {
			return err
		}
		tt, ok := link.(*netlink.Tuntap)
		switch a := link.Attrs(); {
		case !ok || tt.Mode != netlink.TUNTAP_MODE_TAP:
			t.Errorf("tap0 is a %s %+v, want a tap", link.Type(), link)
		case a.TxQLen != TAPTxQueueLen:
			t.Errorf("tap0 transmit queue %d, want %d", a.TxQLen, TAPTxQueueLen)
		case a.Flags&net.FlagUp == 0:
			t.Errorf("tap0 is down: %v", a.Flags)
		case a.Index != tap.Index:
			t.Errorf("tap0 index %d, CreateTAP said %d", a.Index, tap.Index)
		case tt.Owner != 1000 || tt.Group != 1000:
			t.Errorf("tap0 owner %d:%d, want 1000:1000", tt.Owner, tt.Group)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Not in the host's namespace.
	if _, err := netlink.LinkByName("tap0"); err == nil {
		t.Error("tap0 showed up in the host's namespace")
	}

	if _, err := CreateTAP(path, "tap0", 0, 0); err == nil {
		t.Error("a second tap0 was created")
	}
	if err := DeleteTAP(tap); err != nil {
		t.Fatal(err)
	}
	if err := DeleteTAP(tap); err != nil {
		t.Errorf("deleting a gone tap: %v", err)
	}
	err = withNetNSHandle(path, func(h *netlink.Handle) error {
		_, err := h.LinkByName("tap0")
		return err
	})
	var notFound netlink.LinkNotFoundError
	if !errors.As(err, &notFound) {
		t.Errorf("tap0 after DeleteTAP: %v, want not found", err)
	}
}

func TestCreateTAPBadName(t *testing.T) {
	for _, name := range []string{"", "a-name-over-15-bytes", "a/b", "a b", ".."} {
		if _, err := CreateTAP("/nonexistent", name, 0, 0); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateTAP(%q) = %v, want ErrInvalid", name, err)
		}
	}
}

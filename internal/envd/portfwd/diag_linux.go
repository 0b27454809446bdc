package portfwd

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// listenerTable lists the listening TCP sockets of this network namespace.
// It asks the kernel over a sock_diag netlink socket, kept open between
// polls, and falls back for good to /proc/net/tcp{,6} where sock_diag is
// missing (gVisor's netstack has no NETLINK_SOCK_DIAG; its /proc tables
// are cheap to read).
type listenerTable struct {
	fd    int // -1: not open yet
	proc  bool
	seq   uint32
	req   [diagRequestLen]byte
	buf   []byte
	onErr func(error) // told once why the table fell back to /proc
}

func newListenerTable(onFallback func(error)) *listenerTable {
	return &listenerTable{fd: -1, onErr: onFallback}
}

// list appends the listening sockets' local addresses to dst[:0].
func (t *listenerTable) list(dst []netip.AddrPort) ([]netip.AddrPort, error) {
	dst = dst[:0]
	if !t.proc && t.fd < 0 {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		if err != nil {
			t.proc = true
			t.onErr(fmt.Errorf("open a sock_diag netlink socket: %w", err))
		} else {
			t.fd = fd
			t.buf = make([]byte, 8192)
		}
	}
	if t.proc {
		return procListeners(dst)
	}
	for _, fam := range []uint8{afInet, afInet6} {
		var err error
		dst, err = t.dump(dst, fam)
		if unsupported := errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP); unsupported {
			if fam == afInet6 {
				continue // no IPv6 in this kernel
			}
			// The kernel has no TCP diag support (tcp_diag not built).
			t.close()
			t.proc = true
			t.onErr(fmt.Errorf("list IPv4 listeners over sock_diag: %w", err))
			return procListeners(dst[:0])
		}
		if err != nil {
			// A broken socket is reopened on the next poll.
			t.close()
			return nil, err
		}
	}
	return dst, nil
}

// dump runs one sock_diag dump for family and appends what it lists.
func (t *listenerTable) dump(dst []netip.AddrPort, family uint8) ([]netip.AddrPort, error) {
	t.seq++
	putDiagRequest(&t.req, family, t.seq)
	// A netlink socket that was never connected sends to the kernel; plain
	// write and read avoid the sockaddr values sendto and recvfrom
	// allocate.
	if _, err := unix.Write(t.fd, t.req[:]); err != nil {
		return dst, fmt.Errorf("send sock_diag request: %w", err)
	}
	for {
		n, err := unix.Read(t.fd, t.buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return dst, fmt.Errorf("read sock_diag answer: %w", err)
		}
		var done bool
		dst, done, err = parseDiag(dst, t.buf[:n], t.seq)
		if err != nil || done {
			return dst, err
		}
	}
}

func (t *listenerTable) close() {
	if t.fd >= 0 {
		unix.Close(t.fd)
		t.fd = -1
		t.buf = nil
	}
}

// procListeners reads /proc/net/tcp and /proc/net/tcp6.
func procListeners(dst []netip.AddrPort) ([]netip.AddrPort, error) {
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		ls, err := readTable(name)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) { // no IPv6 in this kernel
				continue
			}
			return nil, err
		}
		dst = append(dst, ls...)
	}
	return dst, nil
}

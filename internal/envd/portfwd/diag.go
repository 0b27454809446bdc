package portfwd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
)

// The parts of the kernel's sock_diag netlink protocol (linux/netlink.h,
// linux/inet_diag.h) that listing listening TCP sockets needs. Netlink
// messages are in host byte order, which is little-endian on every
// architecture envd ships for; the socket ids inside are in network order.
const (
	nlmsgHdrLen     = 16
	nlmsgError      = 2
	nlmsgDone       = 3
	sockDiagByFam   = 20 // SOCK_DIAG_BY_FAMILY
	inetDiagMsgLen  = 72 // struct inet_diag_msg
	inetDiagReqLen  = 56 // struct inet_diag_req_v2
	diagRequestLen  = nlmsgHdrLen + inetDiagReqLen
	nlmFRequestDump = 0x1 | 0x300
	ipprotoTCP      = 6
	tcpStateListen  = 10
	afInet          = 2
	afInet6         = 10
)

// putDiagRequest writes into b (diagRequestLen bytes) a dump request for
// the TCP sockets of one address family in state LISTEN only. Asking for LISTEN alone makes the kernel walk just
// its listening hash, never the established-connection hash that
// /proc/net/tcp walks in full (its size is the host's, not the sandbox's:
// about 7 ms a read on a 24 GiB host, the bulk of an idle envd's CPU).
func putDiagRequest(b *[diagRequestLen]byte, family uint8, seq uint32) {
	*b = [diagRequestLen]byte{}
	binary.LittleEndian.PutUint32(b[0:], uint32(len(b)))
	binary.LittleEndian.PutUint16(b[4:], sockDiagByFam)
	binary.LittleEndian.PutUint16(b[6:], nlmFRequestDump)
	binary.LittleEndian.PutUint32(b[8:], seq)
	r := b[nlmsgHdrLen:]
	r[0] = family
	r[1] = ipprotoTCP
	binary.LittleEndian.PutUint32(r[4:], 1<<tcpStateListen)
}

// errDumpInterrupted is a dump the kernel marked inconsistent; the next
// poll reads it again.
var errDumpInterrupted = errors.New("socket dump interrupted")

// parseDiag appends the local addresses of the LISTEN sockets in one
// datagram of a sock_diag dump answering seq to dst. done reports the end
// of the dump. Anything malformed is an error, never a panic: the bytes
// come from the kernel, but the parser is fuzzed as if they did not.
func parseDiag(dst []netip.AddrPort, b []byte, seq uint32) (out []netip.AddrPort, done bool, err error) {
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return dst, false, fmt.Errorf("netlink message header of %d bytes", len(b))
		}
		n := int(binary.LittleEndian.Uint32(b[0:]))
		typ := binary.LittleEndian.Uint16(b[4:])
		flags := binary.LittleEndian.Uint16(b[6:])
		if n < nlmsgHdrLen || n > len(b) {
			return dst, false, fmt.Errorf("netlink message length %d of %d bytes left", n, len(b))
		}
		// The next message starts 4-aligned; the last may lack padding.
		next := b[min(align4(n), len(b)):]
		if got := binary.LittleEndian.Uint32(b[8:]); got != seq {
			// A late answer to an earlier, abandoned dump.
			b = next
			continue
		}
		body := b[nlmsgHdrLen:n]
		const nlmFDumpIntr = 0x10
		if flags&nlmFDumpIntr != 0 {
			return dst, false, errDumpInterrupted
		}
		switch typ {
		case nlmsgDone:
			return dst, true, nil
		case nlmsgError:
			if len(body) < 4 {
				return dst, false, errors.New("short netlink error message")
			}
			if code := int32(binary.LittleEndian.Uint32(body)); code != 0 {
				return dst, false, fmt.Errorf("sock_diag dump: %w", syscall.Errno(-code))
			}
			return dst, true, nil
		case sockDiagByFam:
			if len(body) < inetDiagMsgLen {
				return dst, false, fmt.Errorf("inet_diag_msg of %d bytes", len(body))
			}
			if body[1] == tcpStateListen {
				ap, err := diagLocal(body)
				if err != nil {
					return dst, false, err
				}
				dst = append(dst, ap)
			}
		}
		b = next
	}
	return dst, false, nil
}

// diagLocal reads the local address and port of an inet_diag_msg.
func diagLocal(m []byte) (netip.AddrPort, error) {
	port := binary.BigEndian.Uint16(m[4:])
	var addr netip.Addr
	switch m[0] {
	case afInet:
		addr = netip.AddrFrom4([4]byte(m[8:12]))
	case afInet6:
		addr = netip.AddrFrom16([16]byte(m[8:24])).Unmap()
	default:
		return netip.AddrPort{}, fmt.Errorf("socket of address family %d in a TCP dump", m[0])
	}
	return netip.AddrPortFrom(addr, port), nil
}

func align4(n int) int { return (n + 3) &^ 3 }

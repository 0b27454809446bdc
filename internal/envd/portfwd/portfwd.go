// Package portfwd makes services that listen only on the sandbox's loopback
// reachable from the host: it polls the kernel's table of listening TCP
// sockets and, for each port bound only to 127.0.0.1 or ::1, listens on the
// same port on the sandbox's external IPv4 addresses and proxies every
// connection to the loopback service. A forwarder stops when its service
// stops listening.
//
// Jupyter, `python -m http.server --bind 127.0.0.1` and most dev servers bind
// to loopback by default; without this the host's port proxy could not reach
// them.
package portfwd

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// tcpListen is the kernel's TCP_LISTEN state as /proc/net/tcp prints it.
const tcpListen = "0A"

// ParseProcNetTCP reads the listening sockets from the text of
// /proc/net/tcp or /proc/net/tcp6. IPv4-mapped IPv6 addresses are unmapped,
// so ::ffff:127.0.0.1 reads as 127.0.0.1.
func ParseProcNetTCP(r io.Reader) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first { // header
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			continue
		}
		if f[3] != tcpListen {
			continue
		}
		ap, err := parseHexAddrPort(f[1])
		if err != nil {
			return nil, fmt.Errorf("parse local address %q: %w", f[1], err)
		}
		out = append(out, ap)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read socket table: %w", err)
	}
	return out, nil
}

// parseHexAddrPort decodes the kernel's "ADDR:PORT" form: the address is
// printed as 32-bit words in host byte order (little-endian on every
// architecture envd ships for), the port in big-endian hex.
func parseHexAddrPort(s string) (netip.AddrPort, error) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, errors.New("no port")
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port: %w", err)
	}
	raw, err := hex.DecodeString(hexAddr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address: %w", err)
	}
	if len(raw) != 4 && len(raw) != 16 {
		return netip.AddrPort{}, fmt.Errorf("address of %d bytes", len(raw))
	}
	// Each 32-bit word is little-endian; turn it into network order.
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

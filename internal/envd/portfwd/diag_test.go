package portfwd

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"syscall"
	"testing"
)

// nlmsg builds one netlink message of type typ answering seq.
func nlmsg(typ uint16, seq uint32, flags uint16, body []byte) []byte {
	n := nlmsgHdrLen + len(body)
	b := make([]byte, align4(n))
	binary.LittleEndian.PutUint32(b[0:], uint32(n))
	binary.LittleEndian.PutUint16(b[4:], typ)
	binary.LittleEndian.PutUint16(b[6:], flags)
	binary.LittleEndian.PutUint32(b[8:], seq)
	copy(b[nlmsgHdrLen:], body)
	return b
}

// diagMsg is an inet_diag_msg for a socket in state on ap, followed by an
// attribute as the kernel appends (which the parser must skip).
func diagMsg(state uint8, ap netip.AddrPort) []byte {
	m := make([]byte, inetDiagMsgLen+8)
	m[0] = afInet
	if ap.Addr().Is6() {
		m[0] = afInet6
	}
	m[1] = state
	binary.BigEndian.PutUint16(m[4:], ap.Port())
	copy(m[8:], ap.Addr().AsSlice())
	binary.LittleEndian.PutUint16(m[inetDiagMsgLen:], 5) // an attribute header
	return m
}

func TestParseDiag(t *testing.T) {
	t.Parallel()
	v4 := netip.MustParseAddrPort("127.0.0.1:8888")
	v6 := netip.MustParseAddrPort("[::1]:3000")
	mapped := netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), 4000)
	errMsg := func(errno int32) []byte {
		b := make([]byte, 20)
		binary.LittleEndian.PutUint32(b, uint32(-errno))
		return b
	}
	cat := func(parts ...[]byte) []byte { return slices.Concat(parts...) }
	tests := []struct {
		name     string
		in       []byte
		want     []netip.AddrPort
		wantDone bool
		wantErr  error // matched with errors.Is when not nil
		anyErr   bool
	}{
		{
			name: "listeners then done",
			in: cat(nlmsg(sockDiagByFam, 7, 2, diagMsg(tcpStateListen, v4)),
				nlmsg(sockDiagByFam, 7, 2, diagMsg(tcpStateListen, v6)),
				nlmsg(sockDiagByFam, 7, 2, diagMsg(tcpStateListen, mapped)),
				nlmsg(nlmsgDone, 7, 2, make([]byte, 4))),
			want:     []netip.AddrPort{v4, v6, netip.MustParseAddrPort("127.0.0.1:4000")},
			wantDone: true,
		},
		{
			name: "established sockets and other dumps are skipped",
			in: cat(nlmsg(sockDiagByFam, 7, 2, diagMsg(1, v4)),
				nlmsg(sockDiagByFam, 6, 2, diagMsg(tcpStateListen, v6))),
		},
		{name: "more to come", in: nlmsg(sockDiagByFam, 7, 2, diagMsg(tcpStateListen, v4)), want: []netip.AddrPort{v4}},
		{name: "acknowledgement ends the dump", in: nlmsg(nlmsgError, 7, 0, errMsg(0)), wantDone: true},
		{name: "kernel error", in: nlmsg(nlmsgError, 7, 0, errMsg(int32(syscall.ENOENT))), wantErr: syscall.ENOENT},
		{name: "interrupted dump", in: nlmsg(nlmsgDone, 7, 0x10|2, make([]byte, 4)), wantErr: errDumpInterrupted},
		{name: "short header", in: make([]byte, 8), anyErr: true},
		{name: "length past the end", in: nlmsg(sockDiagByFam, 7, 2, diagMsg(tcpStateListen, v4))[:40], anyErr: true},
		{name: "short diag message", in: nlmsg(sockDiagByFam, 7, 2, make([]byte, 20)), anyErr: true},
		{name: "short error message", in: nlmsg(nlmsgError, 7, 0, []byte{1}), anyErr: true},
		{name: "unknown family", in: nlmsg(sockDiagByFam, 7, 2, func() []byte {
			m := diagMsg(tcpStateListen, v4)
			m[0] = 1
			return m
		}()), anyErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, done, err := parseDiag(nil, tt.in, 7)
			switch {
			case tt.wantErr != nil || tt.anyErr:
				if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
					t.Fatalf("err %v, want %v", err, tt.wantErr)
				}
				return
			case err != nil:
				t.Fatalf("parseDiag: %v", err)
			}
			if !slices.Equal(got, tt.want) || done != tt.wantDone {
				t.Errorf("got %v done=%v, want %v done=%v", got, done, tt.want, tt.wantDone)
			}
		})
	}
}

func TestPutDiagRequest(t *testing.T) {
	t.Parallel()
	var b [diagRequestLen]byte
	b[40] = 0xff // stale bytes of an earlier request must be cleared
	putDiagRequest(&b, afInet6, 9)
	if n := binary.LittleEndian.Uint32(b[0:]); n != diagRequestLen {
		t.Errorf("length %d, want %d", n, diagRequestLen)
	}
	if typ, flags := binary.LittleEndian.Uint16(b[4:]), binary.LittleEndian.Uint16(b[6:]); typ != sockDiagByFam || flags != nlmFRequestDump {
		t.Errorf("type %d flags %#x", typ, flags)
	}
	if seq := binary.LittleEndian.Uint32(b[8:]); seq != 9 {
		t.Errorf("seq %d, want 9", seq)
	}
	r := b[nlmsgHdrLen:]
	if r[0] != afInet6 || r[1] != ipprotoTCP || binary.LittleEndian.Uint32(r[4:]) != 1<<tcpStateListen || b[40] != 0 {
		t.Errorf("request body % x", r)
	}
}

func FuzzParseDiag(f *testing.F) {
	f.Add(nlmsg(sockDiagByFam, 1, 2, diagMsg(tcpStateListen, netip.MustParseAddrPort("127.0.0.1:80"))), uint32(1))
	f.Add(nlmsg(nlmsgDone, 1, 2, nil), uint32(1))
	f.Fuzz(func(t *testing.T, b []byte, seq uint32) {
		got, _, err := parseDiag(nil, b, seq)
		if err != nil {
			return
		}
		for _, ap := range got {
			if !ap.Addr().IsValid() {
				t.Fatalf("invalid address parsed from % x", b)
			}
		}
	})
}

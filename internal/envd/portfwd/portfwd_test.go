package portfwd

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseProcNetTCP(t *testing.T) {
	t.Parallel()
	const header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	tests := []struct {
		name string
		in   string
		want []netip.AddrPort
	}{
		{
			name: "ipv4 listeners, established skipped",
			in: header +
				"   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 566 1\n" +
				"   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 567 1\n" +
				"   2: 0100007F:8C6C 0100007F:C34F 06 00000000:00000000 03:000006DC 00000000     0        0 0 3\n" +
				"   3: 0100A8C0:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 568 1\n",
			want: []netip.AddrPort{
				netip.MustParseAddrPort("0.0.0.0:2024"),
				netip.MustParseAddrPort("127.0.0.1:8080"),
				netip.MustParseAddrPort("192.168.0.1:22"),
			},
		},
		{
			name: "ipv6 any, loopback and mapped",
			in: header +
				"   0: 00000000000000000000000000000000:C34F 00000000000000000000000000000000:0000 0A 0 0 0 0 0 1\n" +
				"   1: 00000000000000000000000001000000:22B8 00000000000000000000000000000000:0000 0A 0 0 0 0 0 1\n" +
				"   2: 0000000000000000FFFF00000100007F:1F91 00000000000000000000000000000000:0000 0A 0 0 0 0 0 1\n" +
				"   3: 0000000000000000FFFF00000100007F:8955 0000000000000000FFFF00000100007F:811C 06 0 0 0 0 0 3\n",
			want: []netip.AddrPort{
				netip.MustParseAddrPort("[::]:49999"),
				netip.MustParseAddrPort("[::1]:8888"),
				netip.MustParseAddrPort("127.0.0.1:8081"),
			},
		},
		{name: "header only", in: header},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseProcNetTCP(strings.NewReader(tt.in))
			if err != nil {
				t.Fatalf("ParseProcNetTCP: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseProcNetTCPRejectsGarbage(t *testing.T) {
	t.Parallel()
	for _, line := range []string{
		"0: ZZ00007F:1F90 00000000:0000 0A",
		"0: 0100007F 00000000:0000 0A",
		"0: 0100007F:XYZW 00000000:0000 0A",
		"0: 01007F:1F90 00000000:0000 0A",
	} {
		if got, err := ParseProcNetTCP(strings.NewReader("header\n" + line + "\n")); err == nil {
			t.Errorf("%q: parsed as %v, want an error", line, got)
		}
	}
}

func FuzzParseProcNetTCP(f *testing.F) {
	f.Add("h\n   0: 0100007F:1F90 00000000:0000 0A 0\n")
	f.Add("h\n   1: 00000000000000000000000001000000:22B8 0:0 0A\n")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseProcNetTCP(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, ap := range got {
			if !ap.Addr().IsValid() {
				t.Fatalf("invalid address parsed from %q", s)
			}
		}
	})
}

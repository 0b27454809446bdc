package network

import (
	"context"
	"errors"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

func mustCIDR(t *testing.T, s string) *net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestSlotAddrs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		cidr        string
		slot        int
		host, guest string
		count       int
	}{
		{"10.88.0.0/16", 0, "10.88.0.1", "10.88.0.2", 16384},
		{"10.88.0.0/16", 1, "10.88.0.5", "10.88.0.6", 16384},
		{"10.88.0.0/16", 63, "10.88.0.253", "10.88.0.254", 16384},
		{"10.88.0.0/16", 64, "10.88.1.1", "10.88.1.2", 16384},
		{"10.88.0.0/16", 16383, "10.88.255.253", "10.88.255.254", 16384},
		{"192.168.7.0/24", 5, "192.168.7.21", "192.168.7.22", 64},
		{"172.20.0.0/30", 0, "172.20.0.1", "172.20.0.2", 1},
		{"10.0.0.0/12", 262143, "10.15.255.253", "10.15.255.254", 262144},
	}
	for _, tt := range tests {
		t.Run(tt.cidr+"/"+tt.host, func(t *testing.T) {
			t.Parallel()
			cfg, err := Config{CIDR: mustCIDR(t, tt.cidr), Runner: &fakeRunner{}}.normalize()
			if err != nil {
				t.Fatal(err)
			}
			if got := slotCount(cfg.CIDR); got != tt.count {
				t.Errorf("slotCount = %d, want %d", got, tt.count)
			}
			host, guest := slotAddrs(cfg.CIDR, tt.slot)
			if host.String() != tt.host || guest.String() != tt.guest {
				t.Errorf("slot %d = %s/%s, want %s/%s", tt.slot, host, guest, tt.host, tt.guest)
			}
			l := cfg.linkFor("sb-x", tt.slot, false)
			if err := cfg.checkLink(l); err != nil {
				t.Errorf("checkLink(linkFor) = %v", err)
			}
			if len(l.HostIf) > 15 {
				t.Errorf("host interface %q longer than 15", l.HostIf)
			}
			if s, ok := slotOfIf(cfg.IfPrefix, l.HostIf); !ok || s != tt.slot {
				t.Errorf("slotOfIf(%q) = %d, %v", l.HostIf, s, ok)
			}
			if !cfg.CIDR.Contains(host) || !cfg.CIDR.Contains(guest) {
				t.Errorf("addresses %s %s outside %s", host, guest, cfg.CIDR)
			}
		})
	}
}

func TestSlotsDoNotOverlap(t *testing.T) {
	t.Parallel()
	cidr := mustCIDR(t, "10.9.0.0/22")
	seen := map[string]bool{}
	for s := range slotCount(cidr) {
		h, g := slotAddrs(cidr, s)
		for _, ip := range []net.IP{h, g} {
			if seen[ip.String()] {
				t.Fatalf("address %s handed out twice", ip)
			}
			seen[ip.String()] = true
		}
		if !(&net.IPNet{IP: h.Mask(slotMask), Mask: slotMask}).Contains(g) {
			t.Fatalf("slot %d: %s and %s not in one /30", s, h, g)
		}
	}
}

func TestSlotOfIf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		slot int
		ok   bool
	}{
		{"wv0", 0, true},
		{"wv17", 17, true},
		{"wv", 0, false},
		{"wv01", 0, false},
		{"wv-1", 0, false},
		{"wvx1", 0, false},
		{"eth0", 0, false},
		{"wv1a", 0, false},
	}
	for _, tt := range tests {
		slot, ok := slotOfIf("wv", tt.name)
		if ok != tt.ok || (ok && slot != tt.slot) {
			t.Errorf("slotOfIf(%q) = %d, %v; want %d, %v", tt.name, slot, ok, tt.slot, tt.ok)
		}
	}
}

func TestConfigNormalize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{CIDR: mustCIDR(t, "10.88.0.0/16")}, true},
		{"no cidr", Config{}, false},
		{"ipv6", Config{CIDR: mustCIDR(t, "fd00::/64")}, false},
		{"too small", Config{CIDR: mustCIDR(t, "10.0.0.0/31")}, false},
		{"too large", Config{CIDR: mustCIDR(t, "10.0.0.0/8")}, false},
		{"long if prefix", Config{CIDR: mustCIDR(t, "10.88.0.0/16"), IfPrefix: "wvabcdefgh"}, false},
		{"tagged if prefix on a /12", Config{CIDR: mustCIDR(t, "10.16.0.0/12"), IfPrefix: "wvabcdefg"}, true},
		{"bad prefix", Config{CIDR: mustCIDR(t, "10.88.0.0/16"), Prefix: "Wr-n"}, false},
		{"tagged prefix", Config{CIDR: mustCIDR(t, "10.88.0.0/16"), Prefix: "wrenn-qzkfa"}, true},
		{"prefix ends in a dash", Config{CIDR: mustCIDR(t, "10.88.0.0/16"), Prefix: "wrenn-"}, false},
		{"double dash", Config{CIDR: mustCIDR(t, "10.88.0.0/16"), Prefix: "wrenn--a"}, false},
		{"prefix too long", Config{CIDR: mustCIDR(t, "10.88.0.0/16"), Prefix: "wrenn-abcdefghijklmno"}, false},
		{"blocked v6", Config{CIDR: mustCIDR(t, "10.88.0.0/16"), BlockedNets: []*net.IPNet{mustCIDR(t, "fd00::/8")}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := tt.cfg.normalize()
			if (err == nil) != tt.ok {
				t.Fatalf("normalize() error = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
		})
	}
}

func TestCheckLinkRejectsForeignLinks(t *testing.T) {
	t.Parallel()
	cfg, err := Config{CIDR: mustCIDR(t, "10.88.0.0/16")}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	mutate := map[string]func(l *Link){
		"other if":    func(l *Link) { l.HostIf = "eth0" },
		"other ns":    func(l *Link) { l.NetNSPath = "/proc/1/ns/net" },
		"other guest": func(l *Link) { l.GuestIP = net.ParseIP("10.88.0.10") },
		"bad slot":    func(l *Link) { l.Slot = -1 },
		"bad id":      func(l *Link) { l.SandboxID = "../x" },
	}
	for name, f := range mutate {
		l := cfg.linkFor("sb-abc", 3, true)
		f(l)
		if err := cfg.checkLink(l); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: checkLink = %v, want ErrInvalid", name, err)
		}
	}
}

func TestSplitRule(t *testing.T) {
	t.Parallel()
	tests := []struct {
		line string
		want []string
	}{
		{`-A X -i wv3 -s 10.88.0.14/32 -m comment --comment "wrenn:sb-abc" -j ACCEPT`,
			[]string{"-A", "X", "-i", "wv3", "-s", "10.88.0.14/32", "-m", "comment", "--comment", "wrenn:sb-abc", "-j", "ACCEPT"}},
		{`-A X -m comment --comment "two words" -j DROP`, []string{"-A", "X", "-m", "comment", "--comment", "two words", "-j", "DROP"}},
		{`-A X -m comment --comment "quo\"te"`, []string{"-A", "X", "-m", "comment", "--comment", `quo"te`}},
		{`-A X -m comment --comment ""`, []string{"-A", "X", "-m", "comment", "--comment", ""}},
		{"  ", nil},
	}
	for _, tt := range tests {
		if got := splitRule(tt.line); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("splitRule(%q) = %q, want %q", tt.line, got, tt.want)
		}
	}
}

// fakeRunner answers iptables calls from an in-memory rule set, enough to
// check what the firewall asks for and that it is idempotent.
type fakeRunner struct {
	mu     sync.Mutex
	calls  []string
	chains map[string][]string // "table chain" → rule specs (without -A chain)
}

func (f *fakeRunner) Run(_ context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.chains == nil {
		f.chains = map[string][]string{}
	}
	f.calls = append(f.calls, name+" "+strings.Join(args, " "))
	if name == "iptables-restore" {
		table := ""
		for _, line := range strings.Split(string(stdin), "\n") {
			switch {
			case strings.HasPrefix(line, "*"):
				table = line[1:]
			case strings.HasPrefix(line, ":"):
				f.chains[table+" "+strings.Fields(line[1:])[0]] = []string{}
			case strings.HasPrefix(line, "-A "):
				a := splitRule(line)
				k := table + " " + a[1]
				f.chains[k] = append(f.chains[k], strings.Join(a[2:], " "))
			}
		}
		return nil, nil
	}
	if name != "iptables" || len(args) < 5 || args[0] != "-w" || args[1] != "-t" {
		return nil, errors.New("unexpected command")
	}
	table, op, chain, rule := args[2], args[3], args[4], strings.Join(args[5:], " ")
	k := table + " " + chain
	rules, exists := f.chains[k]
	builtin := chain == "INPUT" || chain == "FORWARD" || chain == "POSTROUTING"
	if !exists && !builtin && op != "-N" {
		return nil, errors.New("no chain")
	}
	switch op {
	case "-N":
		if exists {
			return nil, errors.New("chain exists")
		}
		f.chains[k] = []string{}
	case "-S":
		// Print as iptables does: comment values in double quotes.
		var b strings.Builder
		b.WriteString("-N " + chain + "\n")
		for _, r := range rules {
			a := strings.Fields(r)
			for i := 1; i < len(a); i++ {
				if a[i-1] == "--comment" {
					a[i] = `"` + a[i] + `"`
				}
			}
			b.WriteString("-A " + chain + " " + strings.Join(a, " ") + "\n")
		}
		return []byte(b.String()), nil
	case "-C":
		if !slices.Contains(rules, rule) {
			return nil, errors.New("no such rule")
		}
	case "-A":
		f.chains[k] = append(rules, rule)
	case "-I":
		f.chains[k] = append([]string{strings.Join(args[6:], " ")}, rules...)
	case "-D":
		i := slices.Index(rules, rule)
		if i < 0 {
			return nil, errors.New("no such rule")
		}
		f.chains[k] = slices.Delete(rules, i, i+1)
	case "-F":
		f.chains[k] = []string{}
	case "-X":
		delete(f.chains, k)
	default:
		return nil, errors.New("unexpected op " + op)
	}
	return nil, nil
}

func (f *fakeRunner) rules(key string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.chains[key])
}

func TestFirewallInstallIsIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	run := &fakeRunner{}
	cfg, err := Config{CIDR: mustCIDR(t, "10.88.0.0/16"), Runner: run,
		BlockedNets: []*net.IPNet{mustCIDR(t, "203.0.113.7/32")}}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	fw := newFirewall(cfg)
	for range 3 {
		if err := fw.install(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := run.rules("filter INPUT"); !reflect.DeepEqual(got, []string{"-i wv+ -j WRENN-IN"}) {
		t.Errorf("INPUT = %q", got)
	}
	if got := run.rules("filter FORWARD"); !reflect.DeepEqual(got, []string{"-j WRENN-FWD"}) {
		t.Errorf("FORWARD = %q", got)
	}
	if got := run.rules("nat POSTROUTING"); !reflect.DeepEqual(got, []string{"-j WRENN-NAT"}) {
		t.Errorf("POSTROUTING = %q", got)
	}
	if got := run.rules("nat WRENN-NAT"); !reflect.DeepEqual(got, []string{"-s 10.88.0.0/16 ! -o wv+ -j MASQUERADE"}) {
		t.Errorf("WRENN-NAT = %q", got)
	}
	in := run.rules("filter WRENN-IN")
	want := []string{"-i wv+ -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", "-i wv+ -j DROP"}
	if !reflect.DeepEqual(in, want) {
		t.Errorf("WRENN-IN = %q, want %q", in, want)
	}
	fwd := run.rules("filter WRENN-FWD")
	for _, must := range []string{
		"-i wv+ -d 10.88.0.0/16 -j DROP", "-i wv+ -d 169.254.0.0/16 -j DROP", "-i wv+ -d 100.64.0.0/10 -j DROP",
		"-i wv+ -d 172.16.0.0/12 -j DROP", "-i wv+ -d 192.168.0.0/16 -j DROP", "-i wv+ -d 127.0.0.0/8 -j DROP",
		"-i wv+ -d 203.0.113.7/32 -j DROP",
	} {
		if !slices.Contains(fwd, must) {
			t.Errorf("WRENN-FWD lacks %q", must)
		}
	}
	// Order matters: replies in first, the catch-all drop last, egress
	// decided after every blocked range.
	if fwd[0] != "-o wv+ -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT" || fwd[len(fwd)-1] != "-i wv+ -j DROP" ||
		fwd[len(fwd)-2] != "-i wv+ -j WRENN-EGRESS" {
		t.Errorf("WRENN-FWD order wrong: %q", fwd)
	}
}

func TestFirewallDNSException(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	run := &fakeRunner{}
	cfg, err := Config{CIDR: mustCIDR(t, "10.88.0.0/16"), Runner: run,
		DNSServers: []net.IP{net.ParseIP("10.255.255.53")}}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	if err := newFirewall(cfg).install(ctx); err != nil {
		t.Fatal(err)
	}
	fwd := run.rules("filter WRENN-FWD")
	udp := slices.Index(fwd, "-i wv+ -d 10.255.255.53/32 -p udp --dport 53 -j WRENN-EGRESS")
	tcp := slices.Index(fwd, "-i wv+ -d 10.255.255.53/32 -p tcp --dport 53 -j WRENN-EGRESS")
	drop := slices.Index(fwd, "-i wv+ -d 10.0.0.0/8 -j DROP")
	if udp < 0 || tcp < 0 || drop < 0 || udp > drop || tcp > drop {
		t.Errorf("DNS must go to the egress decision before private ranges are dropped: %q", fwd)
	}
	for _, bad := range []string{"127.0.0.53", "0.0.0.0", "::1"} {
		if _, err := (Config{CIDR: mustCIDR(t, "10.88.0.0/16"), DNSServers: []net.IP{net.ParseIP(bad)}}).normalize(); !errors.Is(err, ErrInvalid) {
			t.Errorf("DNS server %s accepted: %v", bad, err)
		}
	}
}

func TestFirewallEgressRules(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	run := &fakeRunner{}
	cfg, err := Config{CIDR: mustCIDR(t, "10.88.0.0/16"), Runner: run}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	fw := newFirewall(cfg)
	if err := fw.install(ctx); err != nil {
		t.Fatal(err)
	}
	a, b := cfg.linkFor("sb-a", 0, true), cfg.linkFor("sb-b", 7, true)
	for _, l := range []*Link{a, b, a} {
		if err := fw.allow(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		`-i wv0 -s 10.88.0.2/32 -m comment --comment wrenn:sb-a -j ACCEPT`,
		`-i wv7 -s 10.88.0.30/32 -m comment --comment wrenn:sb-b -j ACCEPT`,
	}
	if got := run.rules("filter WRENN-EGRESS"); !reflect.DeepEqual(got, want) {
		t.Fatalf("egress = %q, want %q", got, want)
	}
	// A restart refreshes the guard but keeps the egress rules.
	if err := fw.install(ctx); err != nil {
		t.Fatal(err)
	}
	if got := run.rules("filter WRENN-EGRESS"); !reflect.DeepEqual(got, want) {
		t.Fatalf("after reinstall egress = %q, want %q", got, want)
	}
	if err := fw.revoke(ctx, func(id string) bool { return id != "sb-a" }); err != nil {
		t.Fatal(err)
	}
	if got := run.rules("filter WRENN-EGRESS"); !reflect.DeepEqual(got, want[1:]) {
		t.Fatalf("after revoke egress = %q, want %q", got, want[1:])
	}
	// Revoking again finds nothing and is fine.
	if err := fw.revoke(ctx, func(id string) bool { return id != "sb-a" }); err != nil {
		t.Fatal(err)
	}
	if err := fw.uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"filter WRENN-EGRESS", "filter WRENN-FWD", "filter WRENN-IN", "nat WRENN-NAT"} {
		if _, ok := run.chains[k]; ok {
			t.Errorf("chain %s left after uninstall", k)
		}
	}
	if got := run.rules("filter FORWARD"); len(got) != 0 {
		t.Errorf("FORWARD still has %q", got)
	}
}

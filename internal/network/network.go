// Package network gives every sandbox its own network namespace, wired to the
// host by a veth pair with a host-reachable address, NAT for egress, and a
// guard that keeps the sandbox away from the host's own services, from other
// sandboxes and from private address ranges.
//
// Addresses come from one CIDR cut into /30 slots: slot n holds the host end
// of sandbox n's veth at .1 and the sandbox's eth0 at .2 of that /30, so the
// agent can reach envd on the guest address and the guest's default route
// points at the host end.
package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
)

// Errors callers branch on with errors.Is.
var (
	// ErrInvalid means an argument (config, sandbox id, link) is malformed.
	ErrInvalid = errors.New("invalid network argument")
	// ErrExhausted means every slot of the CIDR is taken.
	ErrExhausted = errors.New("no free sandbox network slot")
	// ErrConflict means a slot or name is already held by another sandbox.
	ErrConflict = errors.New("sandbox network slot in use")
)

// GuestIf is the sandbox-side name of its veth end, inside its namespace.
const GuestIf = "eth0"

// Link is one sandbox's network as created by Setup. It is plain data so the
// agent can persist it and hand it back to Adopt after a restart.
type Link struct {
	SandboxID string `json:"sandbox_id"`
	// NetNSName is the namespace's name under /var/run/netns.
	NetNSName string `json:"netns_name"`
	// NetNSPath is what a runtime joins (OCI "network" namespace path).
	NetNSPath string `json:"netns_path"`
	// HostIf is the host end of the veth pair.
	HostIf string `json:"host_if"`
	// HostIP is the host end's address, the sandbox's default gateway.
	HostIP net.IP `json:"host_ip"`
	// GuestIP is the sandbox's address, reachable from the host.
	GuestIP net.IP `json:"guest_ip"`
	// Slot is the /30 of the CIDR this link occupies.
	Slot int `json:"slot"`
	// AllowInternet records whether forwarded egress is permitted, so an
	// adopted link gets the same firewall rule back.
	AllowInternet bool `json:"allow_internet"`
}

// Config configures a Manager.
type Config struct {
	// CIDR is the IPv4 range sandbox links are cut from, /30 per sandbox.
	CIDR *net.IPNet
	// Logger receives debug and warning records; nil discards them.
	Logger *slog.Logger
	// Runner runs iptables commands; nil means ExecRunner.
	Runner Runner
	// BlockedNets are destinations sandboxes may never reach on top of the
	// always-blocked private, CGNAT, link-local, loopback, multicast and
	// reserved ranges: for example a control plane on a public address, or
	// the host's own LAN when that LAN uses public addresses. The host itself
	// is always unreachable from sandboxes, on every address and port, except
	// for replies to connections the host opened.
	BlockedNets []*net.IPNet
	// DNSServers are name servers sandboxes with internet access may query
	// on port 53 even when they sit in a blocked range: hosts commonly use a
	// resolver on a private address. Only port 53 of exactly these addresses
	// is opened, and only for sandboxes allowed egress.
	DNSServers []net.IP
	// Prefix names the namespaces (<prefix>-<sandbox id>), the iptables chains
	// (<PREFIX>-FWD, -IN, -EGRESS, -NAT) and rule comments (<prefix>:<id>).
	// Default "wrenn". Two managers with different prefixes, interface
	// prefixes and CIDRs do not see each other's objects, so several agents
	// share a host when each has its own (the agent appends a tag derived
	// from its directory: "wrenn-<tag>"). Neither prefix may be another's
	// followed by "-", or the shorter one's cleanup would see the longer
	// one's namespaces as its own.
	Prefix string
	// IfPrefix starts every host veth name (IfPrefix + slot number). Default
	// "wv", at most 9 characters. Managers sharing a host should use prefixes of one length that end in
	// a letter, so that no name of one parses as a slot of another.
	IfPrefix string
}

var (
	prefixRe = regexp.MustCompile(`^[a-z][a-z0-9]*(-[a-z0-9]+)*$`)
	// ifPrefixRe: 9 characters and the 6 digits of a /12's last slot fill
	// the 15 characters of an interface name.
	ifPrefixRe = regexp.MustCompile(`^[a-z][a-z0-9]{0,8}$`)
	// sandboxIDRe keeps ids safe as file names, rule comments and in the
	// netns name; real ids are sb- plus base32.
	sandboxIDRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
)

// maxPrefixLen keeps "<PREFIX>-EGRESS" within iptables' 28-character
// chain names.
const maxPrefixLen = 20

// normalize fills defaults and checks cfg; it returns a copy.
func (cfg Config) normalize() (Config, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "wrenn"
	}
	if cfg.IfPrefix == "" {
		cfg.IfPrefix = "wv"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Runner == nil {
		cfg.Runner = ExecRunner{}
	}
	if !prefixRe.MatchString(cfg.Prefix) || len(cfg.Prefix) > maxPrefixLen {
		return cfg, fmt.Errorf("%w: prefix %q must be 1-%d lowercase letters or digits in words joined by single dashes", ErrInvalid, cfg.Prefix, maxPrefixLen)
	}
	if !ifPrefixRe.MatchString(cfg.IfPrefix) {
		return cfg, fmt.Errorf("%w: interface prefix %q must be 1-9 lowercase letters or digits", ErrInvalid, cfg.IfPrefix)
	}
	if cfg.CIDR == nil || cfg.CIDR.IP.To4() == nil {
		return cfg, fmt.Errorf("%w: CIDR must be an IPv4 network", ErrInvalid)
	}
	ones, bits := cfg.CIDR.Mask.Size()
	if bits != 32 || ones > 30 || ones < 12 {
		return cfg, fmt.Errorf("%w: CIDR %s must be between a /12 and a /30", ErrInvalid, cfg.CIDR)
	}
	// Work on the network address so slot 0 starts at the range's base even
	// when the caller passed a host address with its mask.
	cfg.CIDR = &net.IPNet{IP: cfg.CIDR.IP.To4().Mask(cfg.CIDR.Mask), Mask: cfg.CIDR.Mask}
	for _, n := range cfg.BlockedNets {
		if n == nil || n.IP.To4() == nil {
			return cfg, fmt.Errorf("%w: blocked network %v is not IPv4", ErrInvalid, n)
		}
	}
	for _, ip := range cfg.DNSServers {
		if ip.To4() == nil || ip.IsLoopback() || ip.IsUnspecified() {
			return cfg, fmt.Errorf("%w: DNS server %v must be a non-loopback IPv4 address", ErrInvalid, ip)
		}
	}
	return cfg, nil
}

// slotCount is how many /30 slots the CIDR holds.
func slotCount(cidr *net.IPNet) int {
	ones, _ := cidr.Mask.Size()
	return (1 << (32 - ones)) / 4
}

// slotAddrs returns the host and guest addresses of slot, which must be
// within [0, slotCount).
func slotAddrs(cidr *net.IPNet, slot int) (host, guest net.IP) {
	base := binary.BigEndian.Uint32(cidr.IP.To4()) + uint32(slot)*4
	host = make(net.IP, 4)
	guest = make(net.IP, 4)
	binary.BigEndian.PutUint32(host, base+1)
	binary.BigEndian.PutUint32(guest, base+2)
	return host, guest
}

// slotMask is the /30 netmask both ends of a veth use.
var slotMask = net.CIDRMask(30, 32)

// hostIfName is the host veth name of slot.
func hostIfName(ifPrefix string, slot int) string {
	return ifPrefix + strconv.Itoa(slot)
}

// slotOfIf parses a host veth name back to its slot; ok is false for names
// that are not ours.
func slotOfIf(ifPrefix, name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, ifPrefix)
	if !ok || rest == "" || (len(rest) > 1 && rest[0] == '0') {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 0 || strconv.Itoa(n) != rest {
		return 0, false
	}
	return n, true
}

// linkFor builds the Link of sandboxID in slot.
func (cfg Config) linkFor(sandboxID string, slot int, allowInternet bool) *Link {
	host, guest := slotAddrs(cfg.CIDR, slot)
	name := cfg.Prefix + "-" + sandboxID
	return &Link{
		SandboxID:     sandboxID,
		NetNSName:     name,
		NetNSPath:     NetNSDir + "/" + name,
		HostIf:        hostIfName(cfg.IfPrefix, slot),
		HostIP:        host,
		GuestIP:       guest,
		Slot:          slot,
		AllowInternet: allowInternet,
	}
}

// checkLink verifies that l is what this configuration would have created
// for its sandbox and slot, so Teardown and Adopt never act on foreign names.
func (cfg Config) checkLink(l *Link) error {
	if l == nil {
		return fmt.Errorf("%w: nil link", ErrInvalid)
	}
	if !sandboxIDRe.MatchString(l.SandboxID) {
		return fmt.Errorf("%w: sandbox id %q", ErrInvalid, l.SandboxID)
	}
	if l.Slot < 0 || l.Slot >= slotCount(cfg.CIDR) {
		return fmt.Errorf("%w: slot %d outside %s", ErrInvalid, l.Slot, cfg.CIDR)
	}
	want := cfg.linkFor(l.SandboxID, l.Slot, l.AllowInternet)
	if l.NetNSName != want.NetNSName || l.NetNSPath != want.NetNSPath || l.HostIf != want.HostIf ||
		!l.HostIP.Equal(want.HostIP) || !l.GuestIP.Equal(want.GuestIP) {
		return fmt.Errorf("%w: link of %s does not match slot %d of %s", ErrInvalid, l.SandboxID, l.Slot, cfg.CIDR)
	}
	return nil
}

// NetNSDir is where named network namespaces are bind-mounted, the same
// place iproute2 uses, so `ip netns` sees them.
const NetNSDir = "/var/run/netns"

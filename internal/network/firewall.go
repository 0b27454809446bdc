package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
)

// Runner runs one firewall command. It exists so tests can record and answer
// iptables calls without touching the host.
type Runner interface {
	// Run executes name with args, feeding stdin when it is not nil, and
	// returns standard output. A non-zero exit is an error that carries the
	// command's standard error.
	Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error)
}

// ExecRunner runs commands as child processes.
type ExecRunner struct{}

// Run implements Runner.
func (ExecRunner) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// alwaysBlocked are destinations no sandbox may reach through the host:
// "this network", RFC 1918, CGNAT, loopback, link-local (cloud metadata
// lives there), multicast and reserved/broadcast.
var alwaysBlocked = []string{
	"0.0.0.0/8",
	"10.0.0.0/8",
	"100.64.0.0/10",
	"127.0.0.0/8",
	"169.254.0.0/16",
	"172.16.0.0/12",
	"192.168.0.0/16",
	"224.0.0.0/4",
	"240.0.0.0/4",
}

// firewall owns the manager's iptables chains. Global chains are replaced
// atomically (iptables-restore --noflush flushes only the chains it
// declares) so a restarted agent never opens a window without the guard;
// the egress chain holds one ACCEPT per internet-enabled sandbox and
// survives restarts, so adopted sandboxes keep their access.
type firewall struct {
	run      Runner
	cidr     *net.IPNet
	blocked  []*net.IPNet
	dns      []net.IP
	prefix   string // lowercase, for comments
	ifGlob   string // e.g. "wv+"
	chainIn  string
	chainFwd string
	chainEg  string
	chainNat string

	// mu serialises our iptables invocations: rule listing and deletion
	// must not interleave, and nft's transactions are cheaper in a row.
	mu sync.Mutex
}

func newFirewall(cfg Config) *firewall {
	up := strings.ToUpper(cfg.Prefix)
	return &firewall{
		run:      cfg.Runner,
		cidr:     cfg.CIDR,
		blocked:  cfg.BlockedNets,
		dns:      cfg.DNSServers,
		prefix:   cfg.Prefix,
		ifGlob:   cfg.IfPrefix + "+",
		chainIn:  up + "-IN",
		chainFwd: up + "-FWD",
		chainEg:  up + "-EGRESS",
		chainNat: up + "-NAT",
	}
}

// globalRules is the iptables-restore input that (re)defines the guard.
func (f *firewall) globalRules() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("*filter")
	w(":%s - [0:0]", f.chainIn)
	w(":%s - [0:0]", f.chainFwd)
	// The host itself: only replies to connections the host opened (the
	// agent dialling envd, the port proxy) come back in.
	w("-A %s -i %s -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", f.chainIn, f.ifGlob)
	w("-A %s -i %s -j DROP", f.chainIn, f.ifGlob)
	// Into sandboxes: replies only; nobody outside may open a connection to
	// a sandbox through the host's forwarding.
	w("-A %s -o %s -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", f.chainFwd, f.ifGlob)
	w("-A %s -o %s -j DROP", f.chainFwd, f.ifGlob)
	w("-A %s -i %s -d %s -j DROP", f.chainFwd, f.ifGlob, f.cidr)
	// The host's name servers, port 53 only, for sandboxes whose egress rule
	// in the EGRESS chain accepts them; the rest falls through to the drops.
	for _, ip := range f.dns {
		for _, proto := range []string{"udp", "tcp"} {
			w("-A %s -i %s -d %s/32 -p %s --dport 53 -j %s", f.chainFwd, f.ifGlob, ip, proto, f.chainEg)
		}
	}
	for _, n := range alwaysBlocked {
		w("-A %s -i %s -d %s -j DROP", f.chainFwd, f.ifGlob, n)
	}
	for _, n := range f.blocked {
		w("-A %s -i %s -d %s -j DROP", f.chainFwd, f.ifGlob, n)
	}
	// What is left is internet-bound: allowed only by a per-sandbox rule.
	w("-A %s -i %s -j %s", f.chainFwd, f.ifGlob, f.chainEg)
	w("-A %s -i %s -j DROP", f.chainFwd, f.ifGlob)
	w("COMMIT")
	w("*nat")
	w(":%s - [0:0]", f.chainNat)
	w("-A %s -s %s ! -o %s -j MASQUERADE", f.chainNat, f.cidr, f.ifGlob)
	w("COMMIT")
	return b.String()
}

// jumps are the rules that hook our chains into the built-in ones.
func (f *firewall) jumps() [][]string {
	return [][]string{
		{"-t", "filter", "INPUT", "-i", f.ifGlob, "-j", f.chainIn},
		{"-t", "filter", "FORWARD", "-j", f.chainFwd},
		{"-t", "nat", "POSTROUTING", "-j", f.chainNat},
	}
}

func (f *firewall) ipt(ctx context.Context, args ...string) ([]byte, error) {
	return f.run.Run(ctx, nil, "iptables", append([]string{"-w"}, args...)...)
}

// install creates or refreshes every chain and jump; it is idempotent.
func (f *firewall) install(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	// The egress chain must exist before the restore references it, and
	// must not be declared there, which would flush it.
	if _, err := f.ipt(ctx, "-t", "filter", "-S", f.chainEg); err != nil {
		if _, err := f.ipt(ctx, "-t", "filter", "-N", f.chainEg); err != nil {
			return fmt.Errorf("create chain %s: %w", f.chainEg, err)
		}
	}
	if _, err := f.run.Run(ctx, []byte(f.globalRules()), "iptables-restore", "-w", "--noflush"); err != nil {
		return fmt.Errorf("install guard chains: %w", err)
	}
	for _, j := range f.jumps() {
		table, chain, rule := j[:2], j[2], j[3:]
		check := append(append(append([]string{}, table...), "-C", chain), rule...)
		if _, err := f.ipt(ctx, check...); err == nil {
			continue
		}
		insert := append(append(append([]string{}, table...), "-I", chain, "1"), rule...)
		if _, err := f.ipt(ctx, insert...); err != nil {
			return fmt.Errorf("hook %s into %s: %w", rule[len(rule)-1], chain, err)
		}
	}
	return nil
}

// uninstall removes the jumps and chains. It exists for tests and for an
// operator's explicit cleanup; the agent leaves the guard in place.
func (f *firewall) uninstall(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for _, j := range f.jumps() {
		table, chain, rule := j[:2], j[2], j[3:]
		del := append(append(append([]string{}, table...), "-D", chain), rule...)
		for range 8 { // remove duplicates too
			if _, err := f.ipt(ctx, del...); err != nil {
				break
			}
		}
	}
	for _, c := range []struct{ table, chain string }{
		{"filter", f.chainFwd}, {"filter", f.chainIn}, {"filter", f.chainEg}, {"nat", f.chainNat},
	} {
		if _, err := f.ipt(ctx, "-t", c.table, "-S", c.chain); err != nil {
			continue // already gone
		}
		if _, err := f.ipt(ctx, "-t", c.table, "-F", c.chain); err != nil {
			errs = append(errs, fmt.Errorf("flush chain %s: %w", c.chain, err))
			continue
		}
		if _, err := f.ipt(ctx, "-t", c.table, "-X", c.chain); err != nil {
			errs = append(errs, fmt.Errorf("delete chain %s: %w", c.chain, err))
		}
	}
	return errors.Join(errs...)
}

// comment tags a sandbox's rules so they can be found again without state.
func (f *firewall) comment(sandboxID string) string { return f.prefix + ":" + sandboxID }

// egressRule is the ACCEPT that lets one sandbox reach the internet. It is
// tied to both the interface and the guest address, so a sandbox cannot use
// it with a forged source.
func (f *firewall) egressRule(l *Link) []string {
	return []string{f.chainEg, "-i", l.HostIf, "-s", l.GuestIP.String() + "/32",
		"-m", "comment", "--comment", f.comment(l.SandboxID), "-j", "ACCEPT"}
}

// allow adds l's egress rule unless it is present.
func (f *firewall) allow(ctx context.Context, l *Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rule := f.egressRule(l)
	if _, err := f.ipt(ctx, append([]string{"-t", "filter", "-C"}, rule...)...); err == nil {
		return nil
	}
	if _, err := f.ipt(ctx, append([]string{"-t", "filter", "-A"}, rule...)...); err != nil {
		return fmt.Errorf("allow egress of %s: %w", l.SandboxID, err)
	}
	return nil
}

// allowAll adds the egress rules of links whose sandbox has none yet, with
// one listing and one iptables-restore for all of them: each iptables run
// reloads the whole ruleset, so concurrent creates that each ran their own
// pair queued behind one another on mu.
func (f *firewall) allowAll(ctx context.Context, links []*Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	have, err := f.sandboxRules(ctx)
	if err != nil {
		return err
	}
	var b strings.Builder
	n := 0
	b.WriteString("*filter\n")
	for _, l := range links {
		if len(have[l.SandboxID]) > 0 {
			continue
		}
		rule := f.egressRule(l)
		b.WriteString("-A")
		for _, a := range rule {
			// Nothing in a rule needs escaping (interface names, addresses
			// and sandbox ids); quoting keeps the comment one argument.
			b.WriteString(` "` + a + `"`)
		}
		b.WriteString("\n")
		n++
	}
	b.WriteString("COMMIT\n")
	if n == 0 {
		return nil
	}
	// --noflush: the egress chain is not declared, so it keeps its rules.
	if _, err := f.run.Run(ctx, []byte(b.String()), "iptables-restore", "-w", "--noflush"); err != nil {
		return fmt.Errorf("allow egress of %d sandboxes: %w", n, err)
	}
	return nil
}

// sandboxRules lists the egress chain's rules by the sandbox id in their
// comment. Rules without one of our comments are left out.
func (f *firewall) sandboxRules(ctx context.Context) (map[string][][]string, error) {
	out, err := f.ipt(ctx, "-t", "filter", "-S", f.chainEg)
	if err != nil {
		return nil, fmt.Errorf("list chain %s: %w", f.chainEg, err)
	}
	rules := map[string][][]string{}
	for _, line := range strings.Split(string(out), "\n") {
		args := splitRule(line)
		if len(args) < 2 || args[0] != "-A" {
			continue
		}
		for i := 0; i+1 < len(args); i++ {
			if args[i] != "--comment" {
				continue
			}
			if id, ok := strings.CutPrefix(args[i+1], f.prefix+":"); ok && id != "" {
				rules[id] = append(rules[id], args[1:])
			}
		}
	}
	return rules, nil
}

// revoke deletes every tagged rule whose sandbox id keep rejects; rules
// already gone are fine.
func (f *firewall) revoke(ctx context.Context, keep func(id string) bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, err := f.sandboxRules(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for id, rs := range rules {
		if keep(id) {
			continue
		}
		for _, r := range rs {
			if _, err := f.ipt(ctx, append([]string{"-t", "filter", "-D"}, r...)...); err != nil {
				errs = append(errs, fmt.Errorf("delete egress rule of %s: %w", id, err))
			}
		}
	}
	return errors.Join(errs...)
}

// splitRule splits one line of `iptables -S` into arguments, honouring the
// double quotes iptables puts around comments.
func splitRule(line string) []string {
	var (
		args  []string
		cur   strings.Builder
		inQ   bool
		have  bool
		escap bool
	)
	for _, r := range line {
		switch {
		case escap:
			cur.WriteRune(r)
			escap = false
		case r == '\\' && inQ:
			escap = true
		case r == '"':
			inQ = !inQ
			have = true
		case (r == ' ' || r == '\t') && !inQ:
			if have {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		args = append(args, cur.String())
	}
	return args
}

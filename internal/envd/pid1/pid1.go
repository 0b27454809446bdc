// Package pid1 is wrenn-init, the first process of every sandbox: it mounts
// the virtual filesystems the runtime did not, sets the hostname and DNS,
// starts envd and then does what PID 1 must: reap every orphan that is
// re-parented to it, pass termination signals on to envd, and leave with
// envd's exit status.
package pid1

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// DefaultEnvd is where the rootfs build puts envd.
const DefaultEnvd = "/usr/local/bin/envd"

// defaultPath is given to envd when the kernel started init with no PATH.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Config is what wrenn-init does, read from its environment and arguments.
type Config struct {
	Envd     string   // envd binary (WRENN_ENVD)
	Args     []string // envd's arguments: wrenn-init's own
	Env      []string // envd's environment: wrenn-init's without WRENN_* variables
	Hostname string   // WRENN_HOSTNAME; empty leaves it
	DNS      []netip.Addr
}

// Load builds a Config from lookup (pkg/config.Env in production), the
// arguments after the program name and the full environment. It refuses a
// WRENN_DNS that is not a comma-separated list of IP addresses.
func Load(lookup func(string) (string, bool), args, environ []string) (Config, error) {
	cfg := Config{Envd: DefaultEnvd, Args: args}
	if v, ok := lookup("WRENN_ENVD"); ok && v != "" {
		cfg.Envd = v
	}
	if v, ok := lookup("WRENN_HOSTNAME"); ok {
		cfg.Hostname = strings.TrimSpace(v)
		if len(cfg.Hostname) > 64 || strings.ContainsAny(cfg.Hostname, " \t\n/\x00") {
			return Config{}, fmt.Errorf("WRENN_HOSTNAME %q is not a host name", v)
		}
	}
	if v, ok := lookup("WRENN_DNS"); ok && strings.TrimSpace(v) != "" {
		for _, s := range strings.Split(v, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil {
				return Config{}, fmt.Errorf("WRENN_DNS: %q is not an IP address", s)
			}
			cfg.DNS = append(cfg.DNS, a)
		}
	}
	hasPath := false
	for _, kv := range environ {
		if strings.HasPrefix(kv, "WRENN_") {
			continue // init's own settings are not the workload's business
		}
		if strings.HasPrefix(kv, "PATH=") {
			hasPath = true
		}
		cfg.Env = append(cfg.Env, kv)
	}
	if !hasPath {
		cfg.Env = append(cfg.Env, "PATH="+defaultPath)
	}
	return cfg, nil
}

// ResolvConf renders /etc/resolv.conf for the given servers.
func ResolvConf(servers []netip.Addr) []byte {
	var b bytes.Buffer
	b.WriteString("# written by wrenn-init\n")
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	return b.Bytes()
}

// MountPoints returns the set of mount points listed in a
// /proc/self/mountinfo, with the kernel's octal escapes undone.
func MountPoints(r io.Reader) (map[string]bool, error) {
	points := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		points[unescapeOctal(f[4])] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return points, nil
}

// unescapeOctal undoes mountinfo's \ooo escapes (space, tab, newline, backslash).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ExitCode turns how envd ended into init's exit status, as a shell would:
// its exit code, or 128 plus the signal that killed it.
func ExitCode(exited bool, code int, signaled bool, signal int) int {
	switch {
	case exited:
		return code
	case signaled:
		return 128 + signal
	default:
		return 1
	}
}

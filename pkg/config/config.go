// Package config loads each Wrenn daemon's configuration from environment
// variables and validates it once at start. It is the only place in Wrenn that
// reads the environment: everything else receives a Config.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultDir is where Wrenn keeps its state when WRENN_DIR is not set.
const DefaultDir = "/var/lib/wrenn"

// Lookup returns an environment value; tests pass a map-backed one.
type Lookup func(key string) (string, bool)

// problems gathers every invalid setting so a user fixes them in one go
// instead of one start per mistake.
type problems []string

func (p *problems) addf(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return errors.New("invalid configuration:\n  - " + strings.Join(p, "\n  - "))
}

func str(env Lookup, key, def string) string {
	if v, ok := env(key); ok && strings.TrimSpace(v) != "" {
		return strings.TrimSpace(v)
	}
	return def
}

// ParseLogLevel accepts debug, info, warn and error (any case).
func ParseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("LOG_LEVEL %q is not one of debug, info, warn, error", s)
}

func checkListen(p *problems, key, v string) {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		p.addf("%s %q is not host:port (for example 127.0.0.1:8080): %v", key, v, err)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		p.addf("%s %q has an invalid port", key, v)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		p.addf("%s %q: host must be an IP address or localhost", key, v)
	}
}

func checkURL(p *problems, key, v string, schemes ...string) {
	u, err := url.Parse(v)
	if err != nil || u.Host == "" {
		p.addf("%s %q is not an absolute URL", key, v)
		return
	}
	for _, s := range schemes {
		if u.Scheme == s {
			return
		}
	}
	p.addf("%s %q must use one of the schemes %s", key, v, strings.Join(schemes, ", "))
}

func checkDir(p *problems, key, v string) {
	if !filepath.IsAbs(v) {
		p.addf("%s %q must be an absolute path", key, v)
	}
}

// ControlPlane is the configuration of wrenn-cp.
type ControlPlane struct {
	// Dir holds logs and other local state (WRENN_DIR).
	Dir string
	// Listen is the API's listen address (WRENN_CP_LISTEN).
	Listen string
	// PublicURL is how users reach the API (WRENN_PUBLIC_URL); it defaults to
	// http:// plus Listen.
	PublicURL   string
	DatabaseURL string
	RedisURL    string
	LogLevel    slog.Level
	// BootstrapAPIKey, when set, makes the control plane create an admin
	// user, a team and this API key on a database with no users, so a fresh
	// stack is usable without a signup step (WRENN_BOOTSTRAP_API_KEY).
	BootstrapAPIKey string
	// BootstrapAdminEmail names that admin (WRENN_BOOTSTRAP_ADMIN_EMAIL).
	BootstrapAdminEmail string
	// CPUOvercommit is how many vCPUs the scheduler places per host core
	// (WRENN_CPU_OVERCOMMIT, default 1.5). A sandbox's vCPUs are a CPU quota,
	// not a reservation, so hosts of mostly idle sandboxes can take more.
	CPUOvercommit float64
	// MemoryOvercommit is how many MiB of sandbox memory limits the
	// scheduler places per MiB of host memory (WRENN_MEMORY_OVERCOMMIT,
	// default 1: limits are reservations). Idle sandboxes use a few MiB of
	// their limit, so hosts of many idle sandboxes can take more.
	MemoryOvercommit float64
	// MetricsToken, when set, is the bearer token GET /metrics requires
	// (WRENN_METRICS_TOKEN, at least 16 characters). Unset: /metrics is
	// open, as Prometheus endpoints usually are; it shows request latencies,
	// lifecycle counts and consumer lag, no team's data.
	MetricsToken string
	// Domain is the parent domain of port URLs (WRENN_DOMAIN, optional, e.g.
	// sandbox.localhost): {port}-{sandbox_id}.{Domain} reaches that port of
	// the sandbox. Empty: only the E2b-Sandbox-Id/-Port header pair routes.
	Domain string
	// CACertFile and CAKeyFile are a configured CA for agent mTLS, PEM
	// files (WRENN_CA_CERT, WRENN_CA_KEY; both or neither). Unset: the
	// control plane generates a CA at first start and keeps it in Postgres,
	// shared by every replica.
	CACertFile string
	CAKeyFile  string
}

// LoadControlPlane reads and validates the control plane's configuration.
func LoadControlPlane(env Lookup) (ControlPlane, error) {
	var p problems
	c := ControlPlane{
		Dir:                 str(env, "WRENN_DIR", DefaultDir),
		Listen:              str(env, "WRENN_CP_LISTEN", "127.0.0.1:8080"),
		DatabaseURL:         str(env, "DATABASE_URL", ""),
		RedisURL:            str(env, "REDIS_URL", ""),
		BootstrapAPIKey:     str(env, "WRENN_BOOTSTRAP_API_KEY", ""),
		BootstrapAdminEmail: str(env, "WRENN_BOOTSTRAP_ADMIN_EMAIL", "admin@localhost"),
		CACertFile:          str(env, "WRENN_CA_CERT", ""),
		CAKeyFile:           str(env, "WRENN_CA_KEY", ""),
	}
	if (c.CACertFile == "") != (c.CAKeyFile == "") {
		p.addf("WRENN_CA_CERT and WRENN_CA_KEY must be set together (PEM files of the CA certificate and its key), or neither to use the generated CA")
	}
	c.PublicURL = str(env, "WRENN_PUBLIC_URL", "http://"+c.Listen)
	checkDir(&p, "WRENN_DIR", c.Dir)
	checkListen(&p, "WRENN_CP_LISTEN", c.Listen)
	oc := str(env, "WRENN_CPU_OVERCOMMIT", "1.5")
	if f, err := strconv.ParseFloat(oc, 64); err != nil || f < 1 || f > 100 {
		p.addf("WRENN_CPU_OVERCOMMIT %q must be a number from 1 to 100 (vCPUs placed per host core)", oc)
	} else {
		c.CPUOvercommit = f
	}
	moc := str(env, "WRENN_MEMORY_OVERCOMMIT", "1")
	if f, err := strconv.ParseFloat(moc, 64); err != nil || f < 1 || f > 100 {
		p.addf("WRENN_MEMORY_OVERCOMMIT %q must be a number from 1 to 100 (MiB of sandbox memory limits placed per MiB of host memory)", moc)
	} else {
		c.MemoryOvercommit = f
	}
	c.MetricsToken = str(env, "WRENN_METRICS_TOKEN", "")
	if c.MetricsToken != "" && (len(c.MetricsToken) < 16 || strings.ContainsFunc(c.MetricsToken, func(r rune) bool { return r <= ' ' || r > '~' })) {
		p.addf("WRENN_METRICS_TOKEN must be at least 16 printable ASCII characters without spaces (a scraper sends it as Authorization: Bearer <token>), or unset")
	}
	checkURL(&p, "WRENN_PUBLIC_URL", c.PublicURL, "http", "https")
	c.Domain = strings.TrimSuffix(strings.ToLower(str(env, "WRENN_DOMAIN", "")), ".")
	if c.Domain != "" && !validDomain(c.Domain) {
		p.addf("WRENN_DOMAIN %q must be a DNS name such as sandbox.localhost (no scheme, port or path)", c.Domain)
	}
	if c.DatabaseURL == "" {
		p.addf("DATABASE_URL is required (for example postgres://wrenn:secret@127.0.0.1:5432/wrenn)")
	} else {
		checkURL(&p, "DATABASE_URL", c.DatabaseURL, "postgres", "postgresql")
	}
	if c.RedisURL == "" {
		p.addf("REDIS_URL is required (for example redis://127.0.0.1:6379/0)")
	} else {
		checkURL(&p, "REDIS_URL", c.RedisURL, "redis", "rediss")
	}
	if c.BootstrapAPIKey != "" && !ValidAPIKey(c.BootstrapAPIKey) {
		p.addf("WRENN_BOOTSTRAP_API_KEY must be wrn_ followed by 32 lowercase hex characters")
	}
	lvl, err := ParseLogLevel(str(env, "LOG_LEVEL", "info"))
	if err != nil {
		p.addf("%v", err)
	}
	c.LogLevel = lvl
	return c, p.err()
}

// validDomain accepts dot-separated DNS labels of letters, digits and
// hyphens, each 1 to 63 long and not starting or ending with a hyphen.
func validDomain(d string) bool {
	if len(d) > 253 {
		return false
	}
	for _, l := range strings.Split(d, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// ValidAPIKey reports whether s has the shape of a Wrenn API key.
func ValidAPIKey(s string) bool {
	const prefix = "wrn_"
	if len(s) != len(prefix)+32 || !strings.HasPrefix(s, prefix) {
		return false
	}
	for _, r := range s[len(prefix):] {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}

// Agent is the configuration of wrenn-agent.
type Agent struct {
	// Dir holds images, sandboxes, logs and credentials (WRENN_DIR).
	Dir string
	// Listen is the agent RPC listen address (WRENN_AGENT_LISTEN).
	Listen string
	// AdvertiseURL is how the control plane reaches this agent
	// (WRENN_AGENT_ADVERTISE_URL); it defaults to http:// plus Listen.
	AdvertiseURL string
	// TLS is whether the agent serves mutual TLS: it does exactly when
	// AdvertiseURL is https, so the agent and the control plane (which
	// dials https addresses with the internal CA and its client
	// certificate) always agree. The agent asks for its certificate at
	// registration and serves HTTPS with it.
	TLS bool
	// ControlPlaneURL is the control plane's base URL (WRENN_CP_URL).
	ControlPlaneURL string
	// RegistrationToken is the one-time token an admin got for this host
	// (WRENN_REGISTRATION_TOKEN). It is needed only until the agent has
	// stored its own credentials under Dir.
	RegistrationToken string
	// Runtime is auto, runc, runsc, qemu or firecracker (WRENN_RUNTIME).
	Runtime string
	// DefaultDiskMB is each sandbox's writable disk when a create names none
	// (WRENN_DEFAULT_ROOTFS_SIZE, e.g. 5G, 2Gi, 1000M, 512Mi).
	DefaultDiskMB uint64
	// SandboxCIDR is the address range sandbox links are cut from
	// (WRENN_SANDBOX_CIDR).
	SandboxCIDR *net.IPNet
	// DestroyOnExit makes a stopping agent destroy its sandboxes instead of
	// leaving them running for the next agent to re-adopt
	// (WRENN_AGENT_SHUTDOWN=destroy; the default is keep).
	DestroyOnExit bool
	LogLevel      slog.Level
}

// Runtimes lists the values WRENN_RUNTIME accepts.
var Runtimes = []string{"auto", "runc", "runsc", "qemu", "firecracker"}

// LoadAgent reads and validates the host agent's configuration.
func LoadAgent(env Lookup) (Agent, error) {
	var p problems
	c := Agent{
		Dir:               str(env, "WRENN_DIR", DefaultDir),
		Listen:            str(env, "WRENN_AGENT_LISTEN", "127.0.0.1:9090"),
		ControlPlaneURL:   str(env, "WRENN_CP_URL", ""),
		RegistrationToken: str(env, "WRENN_REGISTRATION_TOKEN", ""),
		Runtime:           strings.ToLower(str(env, "WRENN_RUNTIME", "auto")),
	}
	c.AdvertiseURL = str(env, "WRENN_AGENT_ADVERTISE_URL", "http://"+c.Listen)
	checkDir(&p, "WRENN_DIR", c.Dir)
	checkListen(&p, "WRENN_AGENT_LISTEN", c.Listen)
	checkURL(&p, "WRENN_AGENT_ADVERTISE_URL", c.AdvertiseURL, "http", "https")
	c.TLS = strings.HasPrefix(strings.ToLower(c.AdvertiseURL), "https://")
	// Without TLS nothing authenticates the control plane to the agent, so
	// plain HTTP is only for a listener no other machine can reach.
	if host, _, err := net.SplitHostPort(c.Listen); err == nil && !c.TLS && !loopback(host) {
		p.addf("WRENN_AGENT_LISTEN %q is reachable from other machines but the agent would serve it without authentication: set WRENN_AGENT_ADVERTISE_URL to an https:// URL (the agent then serves mutual TLS with a certificate from the control plane), or listen on 127.0.0.1", c.Listen)
	}
	if c.ControlPlaneURL == "" {
		p.addf("WRENN_CP_URL is required (for example http://127.0.0.1:8080)")
	} else {
		checkURL(&p, "WRENN_CP_URL", c.ControlPlaneURL, "http", "https")
	}
	known := false
	for _, r := range Runtimes {
		known = known || r == c.Runtime
	}
	if !known {
		p.addf("WRENN_RUNTIME %q is not one of %s", c.Runtime, strings.Join(Runtimes, ", "))
	}
	size := str(env, "WRENN_DEFAULT_ROOTFS_SIZE", "5Gi")
	if b, err := ParseSize(size); err != nil {
		p.addf("WRENN_DEFAULT_ROOTFS_SIZE: %v", err)
	} else if b < 64<<20 {
		p.addf("WRENN_DEFAULT_ROOTFS_SIZE %q is below the 64Mi minimum", size)
	} else {
		c.DefaultDiskMB = b >> 20
	}
	switch shutdown := str(env, "WRENN_AGENT_SHUTDOWN", "keep"); shutdown {
	case "keep":
	case "destroy":
		c.DestroyOnExit = true
	default:
		p.addf("WRENN_AGENT_SHUTDOWN %q is not keep or destroy", shutdown)
	}
	cidr := str(env, "WRENN_SANDBOX_CIDR", "10.88.0.0/16")
	if _, n, err := net.ParseCIDR(cidr); err != nil || n.IP.To4() == nil {
		p.addf("WRENN_SANDBOX_CIDR %q is not an IPv4 CIDR such as 10.88.0.0/16", cidr)
	} else if ones, _ := n.Mask.Size(); ones > 24 {
		p.addf("WRENN_SANDBOX_CIDR %q is too small: use a /24 or larger (each sandbox takes a /30)", cidr)
	} else {
		c.SandboxCIDR = n
	}
	lvl, err := ParseLogLevel(str(env, "LOG_LEVEL", "info"))
	if err != nil {
		p.addf("%v", err)
	}
	c.LogLevel = lvl
	return c, p.err()
}

// Env is the process environment as a Lookup.
func Env() Lookup { return os.LookupEnv }

// loopback reports whether host (an IP or a name) only ever means this
// machine.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

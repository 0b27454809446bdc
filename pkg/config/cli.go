package config

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// CLI is the configuration of the wrenn command-line client: where the API is
// and which key to send. Both come from the two lines `wrenn dev` prints.
type CLI struct {
	// APIURL is the control plane's base URL without a trailing slash
	// (WRENN_API_URL).
	APIURL string
	// APIKey is sent as X-API-Key on every request (WRENN_API_KEY).
	APIKey string
}

// LoadCLI reads and validates the CLI's configuration. Both variables are
// required; the error says where to get them.
func LoadCLI(env Lookup) (CLI, error) {
	var p problems
	c := CLI{
		APIURL: strings.TrimRight(str(env, "WRENN_API_URL", ""), "/"),
		APIKey: str(env, "WRENN_API_KEY", ""),
	}
	const hint = " (`make run` / `wrenn dev` prints the export lines to paste)"
	if c.APIURL == "" {
		p.addf("WRENN_API_URL is not set, for example http://127.0.0.1:8080%s", hint)
	} else {
		checkURL(&p, "WRENN_API_URL", c.APIURL, "http", "https")
	}
	if c.APIKey == "" {
		p.addf("WRENN_API_KEY is not set%s", hint)
	} else if !ValidAPIKey(c.APIKey) {
		p.addf("WRENN_API_KEY does not look like a Wrenn API key (wrn_ followed by 32 lowercase hex characters)")
	}
	return c, p.err()
}

// Dev is the configuration of `wrenn dev`, the one-command local stack. The
// ports are fixed by default, not picked at random, so a restart finds the
// same Postgres and Redis data and prints the same export lines.
type Dev struct {
	// Dir holds everything the stack keeps (WRENN_DIR): dev/ for Postgres,
	// Redis and credentials, images/, agent/, logs/.
	Dir string
	// APIListen is the control plane's listen address (WRENN_CP_LISTEN).
	APIListen string
	// AgentListen is the host agent's listen address (WRENN_AGENT_LISTEN).
	AgentListen string
	// PostgresPort is the loopback port of the stack's own Postgres
	// (WRENN_DEV_POSTGRES_PORT), never the system's 5432.
	PostgresPort int
	// RedisPort is the loopback port of the stack's own Redis
	// (WRENN_DEV_REDIS_PORT), never the system's 6379.
	RedisPort int
	// LogLevel is passed to both daemons (LOG_LEVEL).
	LogLevel string
}

// LoadDev reads and validates the local stack's configuration. Flags of
// `wrenn dev` override these values afterwards; call Dev.Validate again then.
func LoadDev(env Lookup) (Dev, error) {
	var p problems
	c := Dev{
		Dir:         str(env, "WRENN_DIR", DefaultDir),
		APIListen:   str(env, "WRENN_CP_LISTEN", "127.0.0.1:8080"),
		AgentListen: str(env, "WRENN_AGENT_LISTEN", "127.0.0.1:9090"),
		LogLevel:    str(env, "LOG_LEVEL", "info"),
	}
	c.PostgresPort = port(&p, env, "WRENN_DEV_POSTGRES_PORT", 15432)
	c.RedisPort = port(&p, env, "WRENN_DEV_REDIS_PORT", 16379)
	if err := p.err(); err != nil {
		return c, err
	}
	return c, c.Validate()
}

// Validate checks a Dev configuration, also after flags changed it.
func (c Dev) Validate() error {
	var p problems
	checkDir(&p, "WRENN_DIR", c.Dir)
	checkListen(&p, "WRENN_CP_LISTEN", c.APIListen)
	checkListen(&p, "WRENN_AGENT_LISTEN", c.AgentListen)
	for _, x := range []struct {
		key string
		v   int
	}{{"WRENN_DEV_POSTGRES_PORT", c.PostgresPort}, {"WRENN_DEV_REDIS_PORT", c.RedisPort}} {
		if x.v < 1 || x.v > 65535 {
			p.addf("%s %d is not a port between 1 and 65535", x.key, x.v)
		}
	}
	if _, err := ParseLogLevel(c.LogLevel); err != nil {
		p.addf("%v", err)
	}
	if c.APIListen == c.AgentListen {
		p.addf("WRENN_CP_LISTEN and WRENN_AGENT_LISTEN are both %q: they need different ports", c.APIListen)
	}
	if c.PostgresPort == c.RedisPort {
		p.addf("WRENN_DEV_POSTGRES_PORT and WRENN_DEV_REDIS_PORT are both %d", c.PostgresPort)
	}
	return p.err()
}

// APIURL is the URL users reach the local stack's API at: the listen address
// with an unspecified host replaced by loopback.
func (c Dev) APIURL() string { return "http://" + dialable(c.APIListen) }

// AgentURL is the URL the control plane reaches the local agent at.
func (c Dev) AgentURL() string { return "http://" + dialable(c.AgentListen) }

// Sub returns a path under the stack's directory.
func (c Dev) Sub(elem ...string) string { return filepath.Join(append([]string{c.Dir}, elem...)...) }

func dialable(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func port(p *problems, env Lookup, key string, def int) int {
	v := str(env, key, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		p.addf("%s %q is not a number", key, v)
		return def
	}
	return n
}

// Environ returns the process environment as KEY=VALUE pairs. The local stack
// hands it to the daemons it starts, so settings such as WRENN_RUNTIME reach
// them; it lives here because this package is the one that reads the
// environment.
func Environ() []string { return os.Environ() }

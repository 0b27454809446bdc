// Package devstack is `wrenn dev`: the whole platform on this machine in the
// foreground. It starts Postgres and Redis in a directory of their own, builds
// the minimal image, starts the control plane and one host agent, registers
// the agent, prints the two export lines and, on Ctrl-C, destroys the
// sandboxes and stops everything in reverse order.
package devstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wrenn/wrenn/internal/cli"
	"github.com/wrenn/wrenn/internal/localsvc"
	"github.com/wrenn/wrenn/pkg/config"
	"github.com/wrenn/wrenn/pkg/id"
)

// Options are the inputs of Run.
type Options struct {
	Config config.Dev
	// BinDir holds wrenn-cp, wrenn-agent, envd and wrenn-init.
	BinDir string
	// ImageScript is scripts/build-image.sh of the same checkout.
	ImageScript string
	// BaseEnv is the environment the daemons inherit (KEY=VALUE); the
	// stack's own settings override it.
	BaseEnv []string
	// Stdout receives only the export lines and the ready line.
	Stdout io.Writer
	// Stderr receives progress and the daemons' prefixed output.
	Stderr io.Writer
}

// Timeouts of the stack, named so the numbers in messages match the code.
const (
	healthTimeout = 60 * time.Second // control plane healthy, agent online
	drainTimeout  = 20 * time.Second // sandboxes stopped on shutdown
	stopGrace     = 15 * time.Second // SIGTERM → SIGKILL for the daemons
	stopTimeout   = 40 * time.Second // upper bound of any one service's Stop
)

// Binaries Run needs in Options.BinDir.
var Binaries = []string{"wrenn-cp", "wrenn-agent", "envd", "wrenn-init"}

// Run brings the stack up, blocks until ctx ends or a daemon dies, and takes
// everything down again. A stop requested through ctx returns nil; a daemon
// that died returns a *ChildExitedError.
func Run(ctx context.Context, o Options) (err error) {
	t0 := time.Now()
	cfg := o.Config
	if err := cfg.Validate(); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("wrenn dev must run as root: the host agent creates network namespaces, mounts, loop devices and cgroups (try `sudo make run`)")
	}
	for _, b := range Binaries {
		if _, err := os.Stat(filepath.Join(o.BinDir, b)); err != nil {
			return fmt.Errorf("%s is missing from %s: run `make build` first (or pass --bin-dir)", b, o.BinDir)
		}
	}
	if _, err := os.Stat(o.ImageScript); err != nil {
		return fmt.Errorf("image script: %w", err)
	}
	devDir := cfg.Sub("dev")
	if err := os.MkdirAll(devDir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", devDir, err)
	}
	lock, err := AcquireLock(filepath.Join(devDir, "wrenn-dev.pid"))
	if err != nil {
		return err
	}
	defer lock.Release()
	creds, created, err := LoadOrCreateCredentials(filepath.Join(devDir, "credentials.json"))
	if err != nil {
		return err
	}
	logDir := cfg.Sub("logs")
	if err := os.MkdirAll(logDir, 0o750); err != nil {
		return fmt.Errorf("create %s: %w", logDir, err)
	}
	con := &console{out: o.Stderr}
	say := func(format string, args ...any) { con.writeLine("[dev]", fmt.Appendf(nil, format, args...)) }
	if created {
		say("first start: credentials generated in %s", filepath.Join(devDir, "credentials.json"))
	}

	// The servers' log files are opened before the shutdown below is
	// deferred, so they stay open until the servers are gone.
	pgLog, err := openLog(filepath.Join(logDir, "postgres.log"))
	if err != nil {
		return err
	}
	defer pgLog.Close()
	redisLog, err := openLog(filepath.Join(logDir, "redis.log"))
	if err != nil {
		return err
	}
	defer redisLog.Close()

	st := &stack{stopTimeout: stopTimeout, say: say}
	// Whatever happens from here on, everything started is stopped again,
	// with a context that the Ctrl-C which brought us here does not cancel.
	defer func() {
		if serr := st.shutdown(context.WithoutCancel(ctx)); serr != nil {
			err = errors.Join(err, serr)
		}
		if err == nil {
			say("stopped")
		}
	}()
	// A stop requested during start-up is a clean stop, not a failure.
	started := func(err error) error {
		if err != nil && ctx.Err() != nil {
			return nil
		}
		return err
	}

	// The image build needs only the binaries, so it runs while the
	// services start; the agent waits for it.
	imageDone := make(chan error, 1)
	imageOut := newPrefixWriter(con, "[image]", 40)
	buildCtx, cancelBuild := context.WithCancel(ctx)
	defer cancelBuild()
	go func() {
		imageDone <- buildImage(buildCtx, o, imageOut)
	}()
	// When start-up fails before the agent, the build is cancelled, and it
	// is over before Run returns: it writes under the stack's directory.
	imageWaited := false
	defer func() {
		if !imageWaited {
			cancelBuild()
			<-imageDone
		}
	}()

	say("starting postgres on 127.0.0.1:%d", cfg.PostgresPort)
	pg, err := localsvc.StartPostgres(ctx, localsvc.PostgresOptions{
		Dir: filepath.Join(devDir, "postgres"), Port: cfg.PostgresPort,
		User: "wrenn", Password: creds.PostgresPassword, Database: "wrenn", Log: pgLog,
	})
	if err != nil {
		return started(fmt.Errorf("start postgres: %w", err))
	}
	st.add(newProbedService("postgres", net.JoinHostPort("127.0.0.1", strconv.Itoa(pg.Port)), 2*time.Second, pg.Stop))

	say("starting redis on 127.0.0.1:%d", cfg.RedisPort)
	rd, err := localsvc.StartRedis(ctx, localsvc.RedisOptions{
		Dir: filepath.Join(devDir, "redis"), Port: cfg.RedisPort, Password: creds.RedisPassword, Persist: true, Log: redisLog,
	})
	if err != nil {
		return started(fmt.Errorf("start redis: %w", err))
	}
	st.add(newProbedService("redis", net.JoinHostPort("127.0.0.1", strconv.Itoa(rd.Port)), 2*time.Second, rd.Stop))

	apiURL := cfg.APIURL()
	cpEnv := mergeEnv(o.BaseEnv, map[string]string{
		"WRENN_DIR":               cfg.Dir,
		"WRENN_CP_LISTEN":         cfg.APIListen,
		"WRENN_PUBLIC_URL":        apiURL,
		"DATABASE_URL":            pg.DSN,
		"REDIS_URL":               rd.URL,
		"LOG_LEVEL":               cfg.LogLevel,
		"WRENN_BOOTSTRAP_API_KEY": creds.APIKey,
	})
	if !hasEnv(cpEnv, "WRENN_CPU_OVERCOMMIT") {
		// A development machine runs many small, mostly idle sandboxes on
		// few cores; the production default (1.5 vCPUs per core) would stop
		// a 2-core laptop at three. An explicit setting wins.
		cpEnv = append(cpEnv, "WRENN_CPU_OVERCOMMIT="+devCPUOvercommit)
	}
	say("starting the control plane on %s", cfg.APIListen)
	cp, err := startChild("control plane", filepath.Join(o.BinDir, "wrenn-cp"), cpEnv, newPrefixWriter(con, "[cp]", 40), stopGrace)
	if err != nil {
		return err
	}
	st.add(cp)
	probe := newProber()
	defer probe.CloseIdleConnections()
	if err := waitHealthy(ctx, probe, apiURL+"/healthz", cp); err != nil {
		return started(fmt.Errorf("control plane: %w", err))
	}

	client, err := cli.NewClient(apiURL, creds.APIKey)
	if err != nil {
		return err
	}
	defer client.Close()
	// From here the API can destroy sandboxes, so shutdown drains first.
	st.drain = func(ctx context.Context) error { return drainSandboxes(ctx, client, con) }

	hostID, token, err := agentRegistration(ctx, client, cfg.Sub("agent", "credentials.json"), say)
	if err != nil {
		return started(err)
	}

	imageWaited = true
	select {
	case err = <-imageDone:
	case <-ctx.Done():
		<-imageDone
		return nil
	}
	if err != nil {
		return started(fmt.Errorf("build the minimal image: %w\nlast output:\n%s", err, imageOut.Tail()))
	}

	agentEnv := map[string]string{
		"WRENN_DIR":                 cfg.Dir,
		"WRENN_AGENT_LISTEN":        cfg.AgentListen,
		"WRENN_AGENT_ADVERTISE_URL": cfg.AgentURL(),
		"WRENN_CP_URL":              apiURL,
		"LOG_LEVEL":                 cfg.LogLevel,
		"WRENN_AGENT_SHUTDOWN":      "destroy",
		"WRENN_REGISTRATION_TOKEN":  token, // empty: removed below
	}
	say("starting the host agent on %s", cfg.AgentListen)
	agent, err := startChild("host agent", filepath.Join(o.BinDir, "wrenn-agent"), mergeEnv(o.BaseEnv, agentEnv), newPrefixWriter(con, "[agent]", 40), stopGrace)
	if err != nil {
		return err
	}
	st.add(agent)
	if err := waitHealthy(ctx, probe, cfg.AgentURL()+"/healthz", agent); err != nil {
		return started(fmt.Errorf("host agent: %w", err))
	}
	if err := waitOnline(ctx, client, hostID, agent); err != nil {
		return started(err)
	}

	fmt.Fprint(o.Stdout, ExportLines(apiURL, creds.APIKey))
	fmt.Fprintf(o.Stdout, "# ready in %.1fs; paste the two lines above into another shell. Ctrl-C here stops everything.\n", time.Since(t0).Seconds())

	if err := st.watch(ctx); err != nil {
		// With a daemon gone, destroying sandboxes through the API would
		// only time out; an agent still alive destroys its own on SIGTERM.
		st.drain = nil
		var ce *ChildExitedError
		if errors.As(err, &ce) {
			say("%s exited unexpectedly; stopping the rest", ce.Name)
		}
		return err
	}
	say("stopping: destroying sandboxes, then agent, control plane, redis, postgres (Ctrl-C again forces)")
	return nil
}

// mergeEnv returns base with the given keys set; an empty value removes the
// key, so a stray variable in the user's shell cannot leak into a daemon.
// devCPUOvercommit is the local stack's vCPUs per host core.
const devCPUOvercommit = "16"

func mergeEnv(base []string, set map[string]string) []string {
	out := make([]string, 0, len(base)+len(set))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if _, ours := set[k]; !ours {
			out = append(out, kv)
		}
	}
	for k, v := range set {
		if v != "" {
			out = append(out, k+"="+v)
		}
	}
	return out
}

func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == key && v != "" {
			return true
		}
	}
	return false
}

func openLog(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", path, err)
	}
	return f, nil
}

// buildImage runs scripts/build-image.sh, which returns at once when the
// image is up to date. It runs in its own process group so Ctrl-C reaches it
// only through ctx, as SIGTERM to the whole group.
func buildImage(ctx context.Context, o Options, out *prefixWriter) error {
	dir := o.Config.Sub("images", "minimal")
	cmd := exec.CommandContext(ctx, o.ImageScript, dir, filepath.Join(o.BinDir, "envd"), filepath.Join(o.BinDir, "wrenn-init"))
	cmd.Env = o.BaseEnv
	// The debootstrap cache is keyed by content; one the user points at is
	// kept, else it lives with the stack (as `make image` puts it).
	if !hasEnv(o.BaseEnv, "WRENN_CACHE_DIR") {
		cmd.Env = mergeEnv(o.BaseEnv, map[string]string{"WRENN_CACHE_DIR": o.Config.Sub("cache")})
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	err := cmd.Run()
	out.Flush()
	if err != nil {
		return fmt.Errorf("%s: %w", o.ImageScript, err)
	}
	return nil
}

// newProber is the HTTP client for health probes: its own transport, short
// timeouts, no keep-alive to carry across daemon restarts.
func newProber() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: time.Second}).DialContext,
			ResponseHeaderTimeout: 2 * time.Second,
			DisableKeepAlives:     true,
		},
		Timeout: 3 * time.Second,
	}
}

// waitHealthy polls url until it answers 200, failing early if c exits.
func waitHealthy(ctx context.Context, hc *http.Client, url string, c *child) error {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("health probe %s: %w", url, err)
		}
		resp, err := hc.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("%s answered %s", url, resp.Status)
		} else {
			last = err
		}
		select {
		case <-c.Done():
			return &ChildExitedError{Name: c.Name(), Err: c.Err(), Tail: c.Tail()}
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				return fmt.Errorf("not healthy within %s (last probe: %w)\nits last output:\n%s", healthTimeout, last, c.Tail())
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// agentRegistration returns the host id and registration token the agent
// needs, or empty ones when the agent already holds credentials that the
// control plane knows. Credentials left from a database that is gone (no
// host at all) are set aside, since the agent could never log in with them.
func agentRegistration(ctx context.Context, c *cli.Client, credPath string, say func(string, ...any)) (hostID, token string, err error) {
	if _, err := os.Stat(credPath); err == nil {
		hosts, err := c.ListHosts(ctx)
		if err != nil {
			return "", "", fmt.Errorf("list hosts: %w", err)
		}
		if len(hosts) > 0 {
			return "", "", nil
		}
		stale := credPath + ".stale-" + time.Now().UTC().Format("20060102T150405")
		if err := os.Rename(credPath, stale); err != nil {
			return "", "", fmt.Errorf("set aside stale agent credentials: %w", err)
		}
		say("the control plane knows no host: agent credentials moved to %s, registering anew", stale)
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", "", fmt.Errorf("agent credentials: %w", err)
	}
	name := "local"
	for attempt := 0; ; attempt++ {
		reg, err := c.CreateHost(ctx, name)
		// A host of that name left from an earlier run that never got its
		// credentials: register under a fresh name instead.
		if cli.IsStatus(err, http.StatusConflict) && attempt < 3 {
			name = "local-" + id.Secret(3)
			continue
		}
		if err != nil {
			return "", "", fmt.Errorf("register the local host: %w", err)
		}
		say("registered host %s (%s)", reg.Host.Name, reg.Host.ID)
		return reg.Host.ID, reg.RegistrationToken, nil
	}
}

// waitOnline waits until the control plane lists the agent's host as online
// (any online host when the id is unknown because the agent reused its
// credentials), failing early if the agent exits.
func waitOnline(ctx context.Context, c *cli.Client, hostID string, agent *child) error {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		hosts, err := c.ListHosts(ctx)
		if err == nil {
			for _, h := range hosts {
				if h.Status == cli.HostStatusOnline && (hostID == "" || h.ID == hostID) {
					return nil
				}
			}
			last = fmt.Errorf("hosts: %s", describeHosts(hosts))
		} else {
			last = err
		}
		select {
		case <-agent.Done():
			return &ChildExitedError{Name: agent.Name(), Err: agent.Err(), Tail: agent.Tail()}
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				return fmt.Errorf("the host agent did not come online within %s (%v)\nits last output:\n%s", healthTimeout, last, agent.Tail())
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func describeHosts(hosts []cli.Host) string {
	if len(hosts) == 0 {
		return "none registered"
	}
	parts := make([]string, len(hosts))
	for i, h := range hosts {
		parts[i] = h.Name + "=" + h.Status
	}
	return strings.Join(parts, ", ")
}

// drainSandboxes destroys every sandbox that is not stopped and waits until
// none is left in a live status, up to drainTimeout.
func drainSandboxes(ctx context.Context, c *cli.Client, con *console) error {
	ctx, cancel := context.WithTimeout(ctx, drainTimeout)
	defer cancel()
	list, err := c.ListSandboxes(ctx)
	if err != nil {
		return fmt.Errorf("list sandboxes: %w", err)
	}
	n := 0
	for _, sb := range list {
		if settled(sb.Status) || sb.Status == cli.StatusStopping {
			continue
		}
		// A sandbox that changed state meanwhile (409) or vanished (404)
		// needs nothing more from us.
		if err := c.DeleteSandbox(ctx, sb.ID); err != nil && !cli.IsStatus(err, http.StatusConflict) && !cli.IsStatus(err, http.StatusNotFound) {
			return fmt.Errorf("destroy %s: %w", sb.ID, err)
		}
		n++
	}
	if n > 0 {
		con.writeLine("[dev]", fmt.Appendf(nil, "destroying %d sandbox(es)", n))
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		live := 0
		for _, sb := range list {
			if !settled(sb.Status) {
				live++
			}
		}
		if live == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d sandbox(es) not stopped within %s; the agent destroys what is left", live, drainTimeout)
		case <-tick.C:
		}
		if list, err = c.ListSandboxes(ctx); err != nil && ctx.Err() == nil {
			return fmt.Errorf("list sandboxes: %w", err)
		}
	}
}

// settled reports a status in which a sandbox holds no resources.
func settled(status string) bool {
	return status == cli.StatusStopped || status == cli.StatusError
}

// FindBinDir locates the directory holding the stack's binaries: beside the
// running wrenn (bin/wrenn of a checkout), else ./bin of the working directory.
func FindBinDir(exe, cwd string) (string, error) {
	var tried []string
	for _, dir := range []string{filepath.Dir(exe), filepath.Join(cwd, "bin")} {
		if dir == "" || dir == "." || slices.Contains(tried, dir) {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, "wrenn-cp")); err == nil {
			return dir, nil
		}
		tried = append(tried, dir)
	}
	return "", fmt.Errorf("no wrenn-cp in %s: run `make build` (or `make run`) from the repository, or pass --bin-dir", strings.Join(tried, " or "))
}

// ImageScriptFor returns scripts/build-image.sh of the checkout whose bin/
// directory is binDir.
func ImageScriptFor(binDir string) string {
	return filepath.Join(filepath.Dir(binDir), "scripts", "build-image.sh")
}

package agent

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/wrenn/wrenn/internal/envd"
	"github.com/wrenn/wrenn/internal/envdclient"
	"github.com/wrenn/wrenn/internal/image"
	"github.com/wrenn/wrenn/internal/logging"
	"github.com/wrenn/wrenn/internal/network"
	"github.com/wrenn/wrenn/internal/runtime"
	"github.com/wrenn/wrenn/internal/runtime/oci"
	"github.com/wrenn/wrenn/pkg/config"
	"github.com/wrenn/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// EnvdVersion is the envd protocol version the agent reports for its
// sandboxes; SDKs gate features on it.
const EnvdVersion = envd.Version

// heartbeatInterval is how often the agent tells the control plane it lives.
const heartbeatInterval = 30 * time.Second

// diskPoolSize is how many disks of the default size the agent keeps
// formatted (a sparse 1 GiB one takes under 1 MiB of the host's disk), and
// diskPoolWarm how long a start may spend filling the pool before it
// registers; the rest fills in the background.
const (
	diskPoolSize = 32
	diskPoolWarm = 5 * time.Second
)

// Run is the host agent: it recovers the sandboxes a previous agent left,
// registers with the control plane, and serves RPCs until ctx ends.
func Run(ctx context.Context, cfg config.Agent, stderr io.Writer) error {
	log, closeLog, err := logging.Setup(ctx, cfg.Dir, "host-agent", cfg.LogLevel, stderr)
	if err != nil {
		return err
	}
	defer closeLog()
	if os.Geteuid() != 0 {
		return errors.New("the host agent must run as root: it creates namespaces, mounts and cgroups")
	}

	rt, err := selectRuntime(cfg.Runtime, filepath.Join(cfg.Dir, "run"), log)
	if err != nil {
		return err
	}
	dns := hostDNS("/etc/resolv.conf")
	names := ResourceNames(cfg.Dir)
	netw, err := network.New(ctx, network.Config{
		CIDR: cfg.SandboxCIDR, Logger: log, DNSServers: dnsIPs(dns),
		Prefix: names.Prefix, IfPrefix: names.IfPrefix,
	})
	if err != nil {
		return fmt.Errorf("set up host networking: %w", err)
	}
	images, err := image.NewStore(filepath.Join(cfg.Dir, "images"), filepath.Join(cfg.Dir, "run"), log)
	if err != nil {
		return fmt.Errorf("open image store: %w", err)
	}
	cpTransport := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConnsPerHost:   4,
	}
	cpClient := &http.Client{Transport: cpTransport, Timeout: 30 * time.Second}
	reporter := &HTTPReporter{URL: cfg.ControlPlaneURL, Client: cpClient, Logger: log}
	mgr, err := NewManager(Options{
		Dir:           filepath.Join(cfg.Dir, "sandboxes"),
		Runtime:       rt,
		Network:       netw,
		Images:        imageStore{images},
		EnvdTransport: envdclient.NewTransport(),
		DefaultDiskMB: cfg.DefaultDiskMB,
		DNS:           dns,
		Logger:        log,
		Reporter:      reporter,
	})
	if err != nil {
		return err
	}
	if err := mgr.Recover(ctx); err != nil {
		// Leftovers that could not be released are logged, not fatal: the
		// sandboxes that were re-adopted still deserve to be served.
		log.Error("recover sandboxes", "err", err)
	}
	// After Recover: a template that re-adopted sandboxes use is mounted
	// and must not be resized under them (EnsureSize refuses with ErrBusy).
	growTemplates(ctx, images, filepath.Join(cfg.Dir, "images"), cfg.DefaultDiskMB<<20, log)
	// Before registering, so the first creates find formatted disks.
	if err := images.StartDiskPool(ctx, cfg.DefaultDiskMB<<20, diskPoolSize, diskPoolWarm); err != nil {
		log.Warn("start disk pool; creates format their own disks", "err", err)
	}
	defer func() {
		if err := images.Close(); err != nil {
			log.Warn("remove disk pool", "err", err)
		}
	}()

	mux := http.NewServeMux()
	sampler := NewMetricsSampler(mgr, reporter, 0, 0)
	svc := &Service{m: mgr, runtimeName: rt.Name(), envdVersion: EnvdVersion, metrics: sampler}
	path, handler := hostagentv1connect.NewHostAgentServiceHandler(svc)
	mux.Handle(path, handler)
	mux.Handle(FilesRoutePattern, svc.FilesHandler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	// The port proxy sees requests before the mux, which would clean their
	// paths (see PortProxy.Handler).
	portProxy := NewPortProxy(mgr, log, nil)
	defer portProxy.Close()

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	// With an https advertise URL the agent serves mutual TLS; handshakes
	// fail until registration gives it its certificate.
	serverTLS := &ServerTLS{KeyPath: filepath.Join(cfg.Dir, "agent", "tls-key.pem")}
	if cfg.TLS {
		ln = tls.NewListener(ln, serverTLS.Config())
	}
	srv := &http.Server{
		Handler:           portProxy.Handler(mux),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       620 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	// HTTP/1.1 only: multiplexing let one slow sandbox RPC stall every other
	// stream on a shared connection.
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("host agent listening", "addr", ln.Addr().String(), "runtime", rt.Name(), "mtls", cfg.TLS)

	// The watch loop pauses idle sandboxes and notices dead ones; its
	// events wait in the reporter until registration gives it the token.
	watchCtx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		mgr.Run(watchCtx)
	}()
	sampleDone := make(chan struct{})
	go func() {
		defer close(sampleDone)
		sampler.Run(watchCtx)
	}()
	defer func() { <-sampleDone }()
	defer func() {
		stopWatch()
		<-watchDone
	}()

	reg := &Registrar{
		CPURL:     cfg.ControlPlaneURL,
		Address:   cfg.AdvertiseURL,
		Runtime:   rt.Name(),
		CredsPath: filepath.Join(cfg.Dir, "agent", "credentials.json"),
		DataDir:   cfg.Dir,
		Client:    cpClient,
		Logger:    log,
		TLS:       cfg.TLS,
		KeyPath:   serverTLS.KeyPath,
		OnCredentials: func(c Credentials) error {
			if cfg.TLS {
				if err := serverTLS.Update(c); err != nil {
					return err
				}
			}
			reporter.SetToken(c.HostToken)
			return nil
		},
	}
	hbCtx, stopHB := context.WithCancel(ctx)
	defer stopHB()
	regErr := make(chan error, 1)
	go func() {
		creds, err := registerWithRetry(hbCtx, reg, cfg.RegistrationToken, log)
		if err != nil {
			regErr <- err
			return
		}
		log.Info("registered with control plane", "host_id", creds.HostID)
		reg.HeartbeatLoop(hbCtx, heartbeatInterval)
	}()

	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("serve: %w", err)
	case err = <-regErr:
	}

	log.Info("host agent stopping")
	stopHB()
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutCtx)
	// No auto-pause may race the destroys below.
	stopWatch()
	<-watchDone
	if cfg.DestroyOnExit {
		if derr := mgr.DestroyAll(shutCtx); derr != nil {
			log.Error("destroy sandboxes on exit", "err", derr)
		}
	}
	// Destroys flushed their sandboxes' metrics; give them a moment.
	sampler.Close(reportGrace)
	shrinkMinimal(shutCtx, images, mgr, log)
	// With no sandbox left the agent's chains guard nothing; sandboxes kept
	// for the next start keep theirs.
	if len(mgr.List()) == 0 {
		if gerr := netw.RemoveGuard(shutCtx); gerr != nil {
			log.Warn("remove firewall chains", "err", gerr)
		}
	}
	return err
}

// Names is how this agent's host resources are named, so that several
// agents (each with its own WRENN_DIR and WRENN_SANDBOX_CIDR) share a host
// and each one's start-up cleanup removes only its own leftovers: network
// namespaces <Prefix>-<sandbox id>, host veths <IfPrefix><slot>, iptables
// chains <PREFIX>-IN/-FWD/-EGRESS/-NAT and rule comments <Prefix>:<id>.
// Runtime state, mounts and loop devices already live under WRENN_DIR, and
// cgroups are named by sandbox id and found through the runtime's state.
type Names struct {
	Tag      string // five letters derived from WRENN_DIR
	Prefix   string // "wrenn-" + Tag
	IfPrefix string // "wv" + Tag
}

// ResourceNames derives an agent's Names from its directory. The tag is
// letters only, all of one length, so no agent's veth name parses as
// another's slot; it is stable across restarts of the same directory, which
// re-adoption relies on (a moved WRENN_DIR re-adopts nothing).
func ResourceNames(dir string) Names {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	sum := sha256.Sum256([]byte(filepath.Clean(dir)))
	n := binary.BigEndian.Uint64(sum[:8])
	tag := make([]byte, 5)
	for i := range tag {
		tag[i] = byte('a' + n%26)
		n /= 26
	}
	return Names{Tag: string(tag), Prefix: "wrenn-" + string(tag), IfPrefix: "wv" + string(tag)}
}

// minimalTemplate is the base image, shrunk on graceful shutdown so it is
// stored and copied small and regrown at the next start.
const minimalTemplate = "minimal"

// growTemplates runs EnsureSize on every template image smaller than the
// default root filesystem size. Failures are logged: a template left at its
// old size still boots sandboxes.
func growTemplates(ctx context.Context, store *image.Store, imagesDir string, size uint64, log *slog.Logger) {
	entries, err := os.ReadDir(imagesDir)
	if err != nil {
		log.Warn("list templates to grow", "err", err)
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() || !store.Exists(name) {
			continue
		}
		fi, err := os.Stat(store.TemplatePath(name))
		if err != nil || uint64(fi.Size()) >= size {
			continue
		}
		switch err := store.EnsureSize(ctx, name, size); {
		case errors.Is(err, image.ErrBusy):
			log.Info("template in use by re-adopted sandboxes, not grown", "template", name)
		case err != nil:
			log.Warn("grow template", "template", name, "err", err)
		}
	}
}

// shrinkMinimal shrinks the minimal image when no sandbox of this agent uses
// it any more (sandboxes kept across a restart keep it mounted).
func shrinkMinimal(ctx context.Context, store *image.Store, mgr *Manager, log *slog.Logger) {
	if !store.Exists(minimalTemplate) {
		return
	}
	for _, s := range mgr.List() {
		if s.Template == minimalTemplate {
			return
		}
	}
	if err := store.Shrink(ctx, minimalTemplate); err != nil && !errors.Is(err, image.ErrBusy) {
		log.Warn("shrink template", "template", minimalTemplate, "err", err)
	}
}

// registerWithRetry registers, retrying while the control plane is not
// reachable yet; a refusal (bad token) ends it at once.
func registerWithRetry(ctx context.Context, reg *Registrar, token string, log *slog.Logger) (Credentials, error) {
	delay := 200 * time.Millisecond
	for {
		creds, err := reg.Register(ctx, token)
		if err == nil {
			return creds, reg.Heartbeat(ctx)
		}
		var ne net.Error
		var oe *net.OpError
		if !errors.As(err, &ne) && !errors.As(err, &oe) {
			return creds, err
		}
		log.Warn("control plane not reachable yet", "err", err)
		select {
		case <-ctx.Done():
			return creds, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// selectRuntime resolves WRENN_RUNTIME to a driver that can run here: auto
// and runc mean runc (the freezer pauses it in milliseconds); runsc means
// gVisor through the same OCI driver, with the configuration oci.Runsc
// gives. Each runtime keeps its state under its own root in runDir, so one
// never lists, adopts or cleans up the other's sandboxes.
func selectRuntime(name, runDir string, log *slog.Logger) (runtime.Runtime, error) {
	switch name {
	case "auto", "runc":
		// Firecracker arrives with its driver; until then auto means runc.
		if err := oci.Available("runc"); err != nil {
			return nil, err
		}
		return oci.New(oci.Config{Binary: "runc", Root: filepath.Join(runDir, "runc"), Logger: log})
	case oci.RunscName:
		if err := oci.Available(oci.RunscName); err != nil {
			return nil, err
		}
		return oci.New(oci.Runsc(filepath.Join(runDir, oci.RunscName), log))
	}
	return nil, fmt.Errorf("WRENN_RUNTIME=%s: %w: this build runs sandboxes with runc or runsc; set WRENN_RUNTIME to runc, runsc or auto", name, runtime.ErrUnavailable)
}

func dnsIPs(servers []string) []net.IP {
	out := make([]net.IP, 0, len(servers))
	for _, s := range servers {
		out = append(out, net.ParseIP(s))
	}
	return out
}

// hostDNS returns the host's name servers that a sandbox can reach (not
// loopback ones, which live in the host's own namespace).
func hostDNS(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if ip := net.ParseIP(fields[1]); ip != nil && ip.To4() != nil && !ip.IsLoopback() {
				out = append(out, ip.String())
			}
		}
	}
	return out
}

// imageStore adapts the image store to the manager's Images interface, whose
// RootFS is an interface so tests can use fakes.
type imageStore struct{ s *image.Store }

func (i imageStore) Exists(template string) bool { return i.s.Exists(template) }

func (i imageStore) Prepare(ctx context.Context, sandboxID, template string, diskBytes uint64, dir string) (RootFS, error) {
	r, err := i.s.Prepare(ctx, sandboxID, template, diskBytes, dir)
	if err != nil {
		return nil, err
	}
	return r, nil
}

func (i imageStore) Adopt(ctx context.Context, sandboxID, template, dir string) (RootFS, error) {
	r, err := i.s.Adopt(ctx, sandboxID, template, dir)
	if err != nil {
		return nil, err
	}
	return r, nil
}

func (i imageStore) CleanupOrphans(ctx context.Context, keep map[string]bool) error {
	return i.s.CleanupOrphans(ctx, keep)
}

// Command envd is the daemon inside every sandbox: it runs processes and
// serves the envd protocol of E2B's SDKs on one port (default 49983).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"

	"github.com/wrenn/wrenn/internal/envd"
	"github.com/wrenn/wrenn/internal/envd/cgroup"
	"github.com/wrenn/wrenn/internal/envd/portfwd"
	"github.com/wrenn/wrenn/internal/envd/process"
	"github.com/wrenn/wrenn/internal/envd/server"
	"github.com/wrenn/wrenn/pkg/config"
)

// childOOMScoreAdj makes the kernel's OOM killer pick a runaway command
// before envd.
const childOOMScoreAdj = 100

// selfOOMScoreAdj keeps envd the OOM killer's last choice. Not -1000,
// which would exempt it: a grandchild forked before envd raises its
// child's value inherits envd's, and must stay killable.
const selfOOMScoreAdj = "-999"

func main() {
	port := flag.Int("port", envd.DefaultPort, "TCP port to serve on")
	logLevel := flag.String("log-level", "info", "log level: debug, info, warn or error")
	version := flag.Bool("version", false, "print the envd version and exit")
	// Off by default: on a developer's host, envd run standalone must not
	// expose that host's loopback services (databases, agents) to its
	// network. wrenn-init turns it on inside sandboxes.
	// Off by default too: standalone, envd's cgroup belongs to whoever
	// started it; inside a sandbox it is the sandbox's.
	userCgroups := flag.Bool("user-cgroup", false, "run user processes and PTYs in a cgroup of their own beside envd's, where the cgroup filesystem is writable")
	forwardPorts := flag.Bool("forward-ports", false, "forward TCP services listening only on loopback to this machine's external IPv4 addresses")
	flag.Parse()
	if *version {
		fmt.Println(envd.Version)
		return
	}
	level, err := config.ParseLogLevel(*logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "envd:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, log, *port, *forwardPorts, *userCgroups); err != nil {
		log.Error("envd failed", "error", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, port int, forwardPorts, userCgroups bool) error {
	if port <= 0 || port > 65535 {
		return fmt.Errorf("--port %d is not a TCP port", port)
	}
	// envd must survive memory pressure inside the sandbox. Lowering needs
	// CAP_SYS_RESOURCE, which a sandbox lacks; there the runtime starts the
	// init (and so envd) at this value already, and envd still works
	// without it.
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(selfOOMScoreAdj), 0); err != nil && !errors.Is(err, os.ErrPermission) {
		log.Debug("protect envd from the OOM killer", "error", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("listen on port %d: %w", port, err)
	}
	adj := childOOMScoreAdj
	procOpts := process.Options{OOMScoreAdj: &adj}
	if userCgroups {
		// Made while envd already serves: creating cgroups and joining them
		// takes milliseconds of the boot; the first process waits for it.
		g := newLazyCgroup(func() *cgroup.Group { return userCgroup(log) })
		procOpts.Cgroup = g
		// Serve has killed and reaped every process by the time this runs.
		defer func() {
			if err := g.Remove(); err != nil {
				log.Debug("remove the user cgroup", "error", err)
			}
		}()
	}
	srv := server.New(server.Options{
		Logger:  log,
		BaseEnv: os.Environ(),
		Process: procOpts,
	})
	log.Info("envd serving", "addr", ln.Addr().String(), "version", envd.Version)
	go warmExec(log)
	// The forwarder stops with Serve, whether ctx ended or serving failed.
	ctx, cancel := context.WithCancel(ctx)
	var forwarding sync.WaitGroup
	defer forwarding.Wait()
	defer cancel()
	if forwardPorts {
		fwd := portfwd.New(portfwd.Options{Logger: log, SkipPorts: []uint16{uint16(port)}})
		forwarding.Go(func() { fwd.Run(ctx) })
	}
	err = srv.Serve(ctx, ln)
	log.Info("envd stopped")
	return err
}

// warmExec runs one no-op shell, so the sandbox's first command does not
// pay alone for what only a first exec in a fresh root filesystem costs:
// the overlay's first lookups of the shell and its libraries and the
// loader's first reads. That was 2.5 of the 6 ms of a first `true` through
// the API here; a second command took 3.4 ms. It runs beside the boot's
// /init, in envd's own cgroup, and a root without /bin/sh skips it.
func warmExec(log *slog.Logger) {
	cmd := exec.Command("/bin/sh", "-c", ":")
	cmd.Env = []string{}
	cmd.Dir = "/"
	if err := cmd.Run(); err != nil {
		log.Debug("warm up the first exec", "error", err)
	}
}

// userCgroupName is the cgroup, beside envd's own, that user processes and
// PTYs run in.
const userCgroupName = "wrenn-user"

// userCgroup creates the cgroup for user processes, or returns nil when the
// cgroup filesystem is not writable here (a runc sandbox mounts it read-only
// unless delegated); envd then relies on oom_score_adj alone.
func userCgroup(log *slog.Logger) *cgroup.Group {
	l, err := cgroup.Self("/sys/fs/cgroup")
	if err != nil {
		log.Debug("user processes share envd's cgroup", "error", err)
		return nil
	}
	g, err := l.Create(userCgroupName)
	if err != nil {
		log.Debug("user processes share envd's cgroup", "error", err)
		return nil
	}
	log.Debug("user processes get their own cgroup", "dirs", g.Dirs())
	if limit, err := l.LimitMemory(userCgroupName, envdMemoryReserve); err != nil {
		log.Debug("user processes share the sandbox's memory limit with envd", "error", err)
	} else if limit > 0 {
		log.Debug("user processes get a memory limit of their own", "bytes", limit)
	}
	return g
}

// envdMemoryReserve is what of a sandbox's memory limit user processes
// cannot take: envd's and wrenn-init's (about 14 MiB resident together),
// with room for a transfer's buffers, and at most a quarter of a small
// sandbox.
func envdMemoryReserve(limit uint64) uint64 { return min(32<<20, limit/4) }

// lazyCgroup is the user cgroup, made in the background: its methods wait
// until it exists, and do nothing where none could be made.
type lazyCgroup struct {
	ready chan struct{}
	g     *cgroup.Group
}

func newLazyCgroup(create func() *cgroup.Group) *lazyCgroup {
	l := &lazyCgroup{ready: make(chan struct{})}
	go func() {
		defer close(l.ready)
		l.g = create()
	}()
	return l
}

// Dirs lets the process manager fork inside the group (cgroup v1).
func (l *lazyCgroup) Dirs() []string {
	<-l.ready
	if l.g == nil {
		return nil
	}
	return l.g.Dirs()
}

func (l *lazyCgroup) Add(pid int) error {
	<-l.ready
	if l.g == nil {
		return nil
	}
	return l.g.Add(pid)
}

func (l *lazyCgroup) Remove() error {
	<-l.ready
	if l.g == nil {
		return nil
	}
	return l.g.Remove()
}

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
	"os/signal"
	"strconv"
	"sync"
	"syscall"

	"github.com/wrenn/wrenn/internal/envd"
	"github.com/wrenn/wrenn/internal/envd/portfwd"
	"github.com/wrenn/wrenn/internal/envd/process"
	"github.com/wrenn/wrenn/internal/envd/server"
	"github.com/wrenn/wrenn/pkg/config"
)

// childOOMScoreAdj makes the kernel's OOM killer pick a runaway command
// before envd (which sets itself to -1000).
const childOOMScoreAdj = 100

func main() {
	port := flag.Int("port", envd.DefaultPort, "TCP port to serve on")
	logLevel := flag.String("log-level", "info", "log level: debug, info, warn or error")
	version := flag.Bool("version", false, "print the envd version and exit")
	// Off by default: on a developer's host, envd run standalone must not
	// expose that host's loopback services (databases, agents) to its
	// network. wrenn-init turns it on inside sandboxes.
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
	if err := run(ctx, log, *port, *forwardPorts); err != nil {
		log.Error("envd failed", "error", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, port int, forwardPorts bool) error {
	if port <= 0 || port > 65535 {
		return fmt.Errorf("--port %d is not a TCP port", port)
	}
	// envd must survive memory pressure inside the sandbox; without the
	// privilege to do so it still works.
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0); err != nil && !errors.Is(err, os.ErrPermission) {
		log.Debug("protect envd from the OOM killer", "error", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("listen on port %d: %w", port, err)
	}
	adj := childOOMScoreAdj
	srv := server.New(server.Options{
		Logger:  log,
		BaseEnv: os.Environ(),
		Process: process.Options{OOMScoreAdj: &adj},
	})
	log.Info("envd serving", "addr", ln.Addr().String(), "version", envd.Version)
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

// Command wrenn-init is PID 1 inside every sandbox: it prepares the system,
// starts envd with its own arguments, reaps orphans and exits with envd's
// status. It must stay static (CGO_ENABLED=0) and small.
package main

import (
	"log/slog"
	"os"

	"github.com/wrenn/wrenn/internal/envd/pid1"
	"github.com/wrenn/wrenn/pkg/config"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "wrenn-init")
	cfg, err := pid1.Load(config.Env(), os.Args[1:], os.Environ())
	if err != nil {
		log.Error("bad configuration", "error", err)
		os.Exit(2)
	}
	// Inside a sandbox, services bound only to loopback must be reachable
	// from the host's port proxy, and the sandbox's cgroup is envd's to
	// divide; flags given to wrenn-init come later and can still turn
	// either off.
	cfg.Args = append([]string{"--forward-ports", "--user-cgroup"}, cfg.Args...)
	if err := pid1.MountMissing(log, pid1.Mounts); err != nil {
		// envd may still work (e.g. without /dev/shm); let it try.
		log.Error("mount virtual filesystems", "error", err)
	}
	if err := pid1.Setup(log, cfg); err != nil {
		log.Error("set up sandbox identity", "error", err)
	}
	os.Exit(pid1.Supervise(log, cfg))
}

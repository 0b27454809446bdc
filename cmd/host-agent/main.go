// Command wrenn-agent is Wrenn's host agent: it runs sandboxes on this host
// for the control plane.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/wrenn/wrenn/internal/agent"
	"github.com/wrenn/wrenn/pkg/config"
)

func main() {
	cfg, err := config.LoadAgent(config.Env())
	if err != nil {
		fmt.Fprintln(os.Stderr, "wrenn-agent:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx, cfg, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "wrenn-agent:", err)
		os.Exit(1)
	}
}

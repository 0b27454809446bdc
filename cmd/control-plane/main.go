// Command wrenn-cp is the Wrenn control plane; see pkg/cpserver.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/wrenn/wrenn/pkg/cpserver"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cpserver.Run(ctx, cpserver.WithVersion(version)); err != nil {
		fmt.Fprintln(os.Stderr, "wrenn-cp:", err)
		os.Exit(1)
	}
}

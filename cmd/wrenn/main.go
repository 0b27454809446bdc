// Command wrenn is Wrenn's command line: sandbox commands against the REST API
// and `wrenn dev`, which runs the whole platform on this machine.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/wrenn/wrenn/internal/cli"
	"github.com/wrenn/wrenn/internal/devstack"
	"github.com/wrenn/wrenn/pkg/config"
)

func main() {
	// The first SIGINT/SIGTERM cancels ctx: `wrenn dev` then stops its
	// children in order and the other commands abort their request. The
	// handler is then removed, so a second Ctrl-C ends wrenn at once; the
	// daemons still get SIGTERM through their parent-death signal.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	deps := cli.Deps{IO: cli.IO{Stdout: os.Stdout, Stderr: os.Stderr}, Env: config.Env()}
	deps.Extra = append(deps.Extra, devstack.NewCommand(deps))
	code := cli.Main(ctx, os.Args[1:], deps)
	stop()
	os.Exit(code)
}

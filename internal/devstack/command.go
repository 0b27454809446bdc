package devstack

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/wrenn/wrenn/internal/cli"
	"github.com/wrenn/wrenn/pkg/config"
)

// NewCommand returns `wrenn dev`. Settings come from the environment
// (config.LoadDev) and flags override them.
func NewCommand(d cli.Deps) *cobra.Command {
	var binDir string
	flags := config.Dev{}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole platform on this machine in the foreground (Ctrl-C stops it)",
		Long: "Start Postgres and Redis under $WRENN_DIR/dev, build the minimal image, start the control plane\n" +
			"and a host agent, register the agent, and print the export lines for the CLI and SDKs.\n" +
			"Ctrl-C destroys the sandboxes and stops everything. Needs root.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadDev(d.Env)
			if err != nil {
				return err
			}
			f := cmd.Flags()
			if f.Changed("dir") {
				cfg.Dir = flags.Dir
			}
			if f.Changed("api-listen") {
				cfg.APIListen = flags.APIListen
			}
			if f.Changed("agent-listen") {
				cfg.AgentListen = flags.AgentListen
			}
			if f.Changed("postgres-port") {
				cfg.PostgresPort = flags.PostgresPort
			}
			if f.Changed("redis-port") {
				cfg.RedisPort = flags.RedisPort
			}
			if f.Changed("log-level") {
				cfg.LogLevel = flags.LogLevel
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			if binDir == "" {
				exe, err := os.Executable()
				if err == nil {
					exe, err = filepath.EvalSymlinks(exe)
				}
				if err != nil {
					return fmt.Errorf("locate the wrenn binary: %w", err)
				}
				cwd, err := os.Getwd()
				if err != nil {
					return fmt.Errorf("working directory: %w", err)
				}
				if binDir, err = FindBinDir(exe, cwd); err != nil {
					return err
				}
			}
			binDir, err = filepath.Abs(binDir)
			if err != nil {
				return fmt.Errorf("--bin-dir: %w", err)
			}
			return Run(cmd.Context(), Options{
				Config:      cfg,
				BinDir:      binDir,
				ImageScript: ImageScriptFor(binDir),
				BaseEnv:     config.Environ(),
				Stdout:      d.Stdout,
				Stderr:      d.Stderr,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&flags.Dir, "dir", config.DefaultDir, "state directory (env WRENN_DIR)")
	f.StringVar(&flags.APIListen, "api-listen", "127.0.0.1:8080", "control plane listen address (env WRENN_CP_LISTEN)")
	f.StringVar(&flags.AgentListen, "agent-listen", "127.0.0.1:9090", "host agent listen address (env WRENN_AGENT_LISTEN)")
	f.IntVar(&flags.PostgresPort, "postgres-port", 15432, "loopback port of the stack's Postgres (env WRENN_DEV_POSTGRES_PORT)")
	f.IntVar(&flags.RedisPort, "redis-port", 16379, "loopback port of the stack's Redis (env WRENN_DEV_REDIS_PORT)")
	f.StringVar(&flags.LogLevel, "log-level", "info", "debug, info, warn or error (env LOG_LEVEL)")
	f.StringVar(&binDir, "bin-dir", "", "directory with wrenn-cp, wrenn-agent, envd, wrenn-init (default: beside this binary, else ./bin)")
	return cmd
}

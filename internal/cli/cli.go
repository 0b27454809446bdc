// Package cli is the wrenn command line: user commands against the REST API
// and `wrenn dev`, the one-command local stack. main only wires the process's
// streams, environment and signals into Main, so every command is tested
// in-process against a fake API.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wrenn/wrenn/pkg/config"
)

// IO is what a command reads and writes, injected so tests capture it.
type IO struct {
	Stdout io.Writer
	Stderr io.Writer
}

// Deps are the process-level inputs of the CLI.
type Deps struct {
	IO
	// Env is the environment, read only through pkg/config.
	Env config.Lookup
	// Now is the clock used for ages in tables.
	Now func() time.Time
	// Extra are further top-level commands, such as `wrenn dev` from
	// internal/devstack (which imports this package for its API client, so
	// the dependency cannot run the other way).
	Extra []*cobra.Command
}

// ExitError makes the process exit with Code without printing anything more:
// `wrenn sandbox exec` exits with the remote command's status.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// Main runs the CLI with args (without the program name) and returns the
// process exit status. Errors are printed once as "error: <message>".
func Main(ctx context.Context, args []string, d Deps) int {
	if d.Now == nil {
		d.Now = time.Now
	}
	root := NewRootCommand(d)
	root.SetArgs(args)
	root.SetOut(d.Stdout)
	root.SetErr(d.Stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	fmt.Fprintf(d.Stderr, "error: %s\n", userMessage(err))
	return 1
}

// userMessage turns an error into what a user should read: API errors carry
// a message written for users already, and a refused connection becomes a
// hint to start the stack.
func userMessage(err error) string {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Error()
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return err.Error() + " (is the control plane running? start it with `make run`)"
	}
	return err.Error()
}

type globals struct {
	json bool
}

// NewRootCommand builds the wrenn command tree.
func NewRootCommand(d Deps) *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "wrenn",
		Short:         "Wrenn: disposable Linux sandboxes for AI agents and developers",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().BoolVar(&g.json, "json", false, "print JSON instead of text")
	root.AddCommand(newSandboxCommand(d, g))
	root.AddCommand(d.Extra...)
	return root
}

func newClient(d Deps) (*Client, error) {
	c, err := config.LoadCLI(d.Env)
	if err != nil {
		return nil, err
	}
	return NewClient(c.APIURL, c.APIKey)
}

func newSandboxCommand(d Deps, g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "sandbox",
		Aliases: []string{"sandboxes", "sb"},
		Short:   "Create, list, run commands in and kill sandboxes",
	}
	cmd.AddCommand(newCreateCommand(d, g), newListCommand(d, g), newExecCommand(d, g), newKillCommand(d, g))
	return cmd
}

func newCreateCommand(d Deps, g *globals) *cobra.Command {
	var (
		req         CreateSandboxRequest
		wait        bool
		waitTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a sandbox and print its id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient(d)
			if err != nil {
				return err
			}
			defer c.Close()
			sb, err := c.CreateSandbox(cmd.Context(), req)
			if err != nil {
				return fmt.Errorf("create sandbox: %w", err)
			}
			if wait && sb.Status != StatusRunning {
				sb, err = c.WaitSandbox(cmd.Context(), sb.ID, waitTimeout, func(s Sandbox) bool { return s.Status == StatusRunning })
				if err != nil {
					return err
				}
			}
			if g.json {
				return printJSON(d.Stdout, sb)
			}
			_, err = fmt.Fprintln(d.Stdout, sb.ID)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Template, "template", "minimal", "template to start from")
	f.IntVar(&req.VCPUs, "vcpus", 0, "virtual CPUs (default: the control plane's)")
	f.IntVar(&req.MemoryMB, "memory-mb", 0, "memory in MiB (default: the control plane's)")
	f.IntVar(&req.TimeoutSec, "timeout-sec", 0, "seconds of inactivity before the sandbox is paused (default: the control plane's)")
	f.BoolVar(&wait, "wait", true, "wait until the sandbox is running")
	f.DurationVar(&waitTimeout, "wait-timeout", 60*time.Second, "how long --wait waits")
	return cmd
}

func newListCommand(d Deps, g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List your team's sandboxes",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient(d)
			if err != nil {
				return err
			}
			defer c.Close()
			list, err := c.ListSandboxes(cmd.Context())
			if err != nil {
				return fmt.Errorf("list sandboxes: %w", err)
			}
			if g.json {
				if list == nil {
					list = []Sandbox{}
				}
				return printJSON(d.Stdout, list)
			}
			return writeTable(d.Stdout, list, d.Now())
		},
	}
}

func writeTable(w io.Writer, list []Sandbox, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTEMPLATE\tSTATUS\tVCPUS\tMEM\tCREATED")
	for _, sb := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%dMiB\t%s\n", sb.ID, sb.Template, sb.Status, sb.VCPUs, sb.MemoryMB, age(now, sb.CreatedAt))
	}
	return tw.Flush()
}

// age renders how long ago t was, as a table column a person scans.
func age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// execRequest turns the words after `--` into a request: one word holding
// whitespace is a shell line (sent without args, so the API runs it through
// /bin/sh -c); otherwise the first word is the program and the rest its
// arguments.
func execRequest(words []string) ExecRequest {
	if len(words) == 1 {
		return ExecRequest{Cmd: words[0]}
	}
	return ExecRequest{Cmd: words[0], Args: words[1:]}
}

func newExecCommand(d Deps, g *globals) *cobra.Command {
	var (
		env        []string
		cwd, user  string
		timeoutSec int
	)
	cmd := &cobra.Command{
		Use:   "exec ID -- CMD [ARGS...]",
		Short: "Run a command in a sandbox; exits with the command's exit status",
		Long: "Run a command in a running sandbox, print its stdout and stderr, and exit with its exit status.\n" +
			"A single quoted argument is a shell line: wrenn sandbox exec ID -- 'ls / | wc -l'.",
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if at := cmd.ArgsLenAtDash(); at != -1 && at != 1 {
				return errors.New("usage: wrenn sandbox exec ID -- CMD [ARGS...]")
			}
			req := execRequest(args[1:])
			req.Cwd, req.User, req.TimeoutSec = cwd, user, timeoutSec
			if len(env) > 0 {
				req.Env = make(map[string]string, len(env))
				for _, kv := range env {
					k, v, ok := strings.Cut(kv, "=")
					if !ok || k == "" {
						return fmt.Errorf("--env %q is not KEY=VALUE", kv)
					}
					req.Env[k] = v
				}
			}
			c, err := newClient(d)
			if err != nil {
				return err
			}
			defer c.Close()
			res, err := c.Exec(cmd.Context(), args[0], req)
			if err != nil {
				return fmt.Errorf("exec in %s: %w", args[0], err)
			}
			if g.json {
				if err := printJSON(d.Stdout, res); err != nil {
					return err
				}
			} else {
				if _, err := io.WriteString(d.Stdout, res.Stdout); err != nil {
					return err
				}
				if _, err := io.WriteString(d.Stderr, res.Stderr); err != nil {
					return err
				}
			}
			return exitStatus(d.Stderr, res)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringVar(&cwd, "cwd", "", "working directory")
	f.StringVar(&user, "user", "", "user to run as")
	f.IntVar(&timeoutSec, "timeout-sec", 0, "kill the command after this many seconds (default: the control plane's)")
	return cmd
}

// exitStatus maps a command's result to the CLI's own exit: its exit code
// when it is a valid status, 124 (as timeout(1)) when it timed out.
func exitStatus(stderr io.Writer, res ExecResult) error {
	code := res.ExitCode
	if res.TimedOut {
		fmt.Fprintf(stderr, "error: the command timed out after %dms\n", res.DurationMS)
		if code <= 0 {
			code = 124
		}
	}
	switch {
	case code == 0:
		return nil
	case code < 0 || code > 255:
		return &ExitError{Code: 1}
	}
	return &ExitError{Code: code}
}

func newKillCommand(d Deps, g *globals) *cobra.Command {
	var (
		noWait      bool
		waitTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "kill ID...",
		Short: "Destroy sandboxes and wait until they are stopped",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient(d)
			if err != nil {
				return err
			}
			defer c.Close()
			var out []Sandbox
			for _, id := range args {
				if err := c.DeleteSandbox(cmd.Context(), id); err != nil {
					return fmt.Errorf("kill %s: %w", id, err)
				}
				sb := Sandbox{ID: id, Status: StatusStopping}
				if !noWait {
					sb, err = c.WaitSandbox(cmd.Context(), id, waitTimeout, func(s Sandbox) bool { return s.Status == StatusStopped })
					switch {
					case IsStatus(err, http.StatusNotFound):
						// A control plane that forgets destroyed sandboxes
						// has finished with this one too.
						sb = Sandbox{ID: id, Status: StatusStopped}
					case err != nil:
						return err
					}
				}
				out = append(out, sb)
				if !g.json {
					fmt.Fprintln(d.Stdout, id)
				}
			}
			if g.json {
				return printJSON(d.Stdout, out)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the control plane accepted the kill")
	cmd.Flags().DurationVar(&waitTimeout, "wait-timeout", 60*time.Second, "how long to wait for stopped")
	return cmd
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

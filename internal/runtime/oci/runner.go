package oci

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Cmd is one invocation of the runtime binary.
type Cmd struct {
	// Args is the full argv, Args[0] the program.
	Args []string
	// OutputFile, when set, is appended to with the command's stdout and
	// stderr instead of capturing them. `create` needs it: the container's
	// init inherits runc's stdio, and a pipe would stay open (and a reader
	// waiting for EOF would hang) for the sandbox's whole life.
	OutputFile string
}

// Runner runs runtime commands. The driver talks to the OS only through it,
// so unit tests replace it with a fake that records the exact commands.
type Runner interface {
	// Run runs c with /dev/null as stdin and returns its stdout. A command
	// that fails returns a *CommandError.
	Run(ctx context.Context, c Cmd) ([]byte, error)
}

// CommandError is a runtime command that exited non-zero or could not start;
// Stderr holds what it said, for the log and the error message.
type CommandError struct {
	Args   []string
	Stderr string
	Err    error
}

func (e *CommandError) Error() string {
	msg := fmt.Sprintf("%s: %v", strings.Join(e.Args, " "), e.Err)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	}
	return msg
}

func (e *CommandError) Unwrap() error { return e.Err }

// ExecRunner runs commands as child processes.
type ExecRunner struct{}

var _ Runner = ExecRunner{}

// Run implements Runner.
func (ExecRunner) Run(ctx context.Context, c Cmd) ([]byte, error) {
	if len(c.Args) == 0 {
		return nil, fmt.Errorf("run runtime command: empty argv")
	}
	cmd := exec.CommandContext(ctx, c.Args[0], c.Args[1:]...)
	// A nil Stdin is /dev/null.
	var stdout, stderr bytes.Buffer
	if c.OutputFile != "" {
		f, err := os.OpenFile(c.OutputFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return nil, fmt.Errorf("open output file for %s: %w", c.Args[0], err)
		}
		defer f.Close()
		// An *os.File is handed to the child as is: no copying goroutine,
		// so Wait returns when runc exits even though the container keeps
		// the descriptor.
		cmd.Stdout, cmd.Stderr = f, f
	} else {
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
	}
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), &CommandError{Args: c.Args, Stderr: stderr.String(), Err: err}
	}
	return stdout.Bytes(), nil
}

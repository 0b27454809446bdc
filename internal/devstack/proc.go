package devstack

import (
	"context"
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// child is a daemon the stack started: the control plane or the agent.
type child struct {
	name string
	cmd  *exec.Cmd
	out  *prefixWriter
	// grace is how long Stop waits after SIGTERM before SIGKILL.
	grace time.Duration
	done  chan struct{}
	err   error // Wait's result, valid once done is closed
}

// startChild starts path with env, its output going to out. It returns once
// the process runs; Done closes when it has been reaped.
func startChild(name, path string, env []string, out *prefixWriter, grace time.Duration) (*child, error) {
	cmd := exec.Command(path)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	setProcAttrs(cmd)
	c := &child{name: name, cmd: cmd, out: out, grace: grace, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		lockThread()
		defer unlockThread()
		if err := cmd.Start(); err != nil {
			started <- err
			close(c.done)
			return
		}
		started <- nil
		c.err = cmd.Wait()
		out.Flush()
		close(c.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, path, err)
	}
	return c, nil
}

func (c *child) Name() string          { return c.name }
func (c *child) Done() <-chan struct{} { return c.done }

// Err is why the child ended; valid once Done is closed.
func (c *child) Err() error {
	if c.err == nil {
		return fmt.Errorf("%s exited with status 0", c.name)
	}
	return c.err
}

// Tail is the child's last output lines.
func (c *child) Tail() string { return c.out.Tail() }

// Stop sends SIGTERM to the daemon, waits up to its grace period (or ctx),
// then SIGKILLs its whole process group. It returns once the process is
// reaped.
func (c *child) Stop(ctx context.Context) error {
	select {
	case <-c.done:
		return nil
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(c.grace)
	defer timer.Stop()
	var err error
	select {
	case <-c.done:
		return nil
	case <-timer.C:
		err = fmt.Errorf("%s did not stop within %s after SIGTERM; killed", c.name, c.grace)
	case <-ctx.Done():
		err = fmt.Errorf("stop %s: %w; killed", c.name, ctx.Err())
	}
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	<-c.done
	return err
}

// Package localsvc starts real Postgres and Redis servers from the Debian
// binaries, each in a directory of its own and listening on loopback only. The
// local stack (make run) keeps its data across starts with it, and tests start
// throwaway servers with it (see internal/testenv), so the same code path is
// exercised in both.
//
// Every server runs in a process group of its own. Stop shuts it down
// gracefully and then kills the whole group, and the server gets a
// parent-death signal, so it never outlives the process that started it even
// when that process is killed.
package localsvc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"sync"
	"time"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Another
// process may take it before the caller binds it; the Start functions retry
// with a new port when they picked it themselves.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// errExited reports that a server process ended before it became ready.
var errExited = errors.New("server process exited before it was ready")

// tail keeps the last bytes written to it so a failed start can show what the
// server said without the caller having to dig through a log file.
type tail struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.buf))
}

// proc is a running server process. The goroutine that started it holds its OS
// thread locked until the process ends: Linux sends the parent-death signal
// when the *thread* that forked the child exits, and a locked, blocked thread
// never exits early.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been reaped
	err  error         // Wait's result, valid after done
	out  *tail
}

// startProc starts cmd in its own process group with a parent-death signal
// and returns once it is running.
func startProc(cmd *exec.Cmd, log io.Writer, deathSig deathSignal) (*proc, error) {
	p := &proc{cmd: cmd, done: make(chan struct{}), out: &tail{max: 4096}}
	var w io.Writer = p.out
	if log != nil {
		w = io.MultiWriter(log, p.out)
	}
	cmd.Stdout, cmd.Stderr = w, w
	// Children of the server (Postgres backends) inherit the output pipe;
	// after a kill do not wait forever for them to close it.
	cmd.WaitDelay = 5 * time.Second
	setProcAttrs(cmd, deathSig)
	started := make(chan error, 1)
	go func() {
		lockThread()
		defer unlockThread()
		if err := cmd.Start(); err != nil {
			started <- err
			close(p.done)
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	return p, nil
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends the graceful signal, waits for the process until ctx ends or
// grace passes, and then kills its whole group. It always reaps the process.
func (p *proc) stop(ctx context.Context, graceful signalName, grace time.Duration) error {
	if p.exited() {
		killGroup(p.cmd)
		return nil
	}
	sendSignal(p.cmd, graceful)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	var err error
	select {
	case <-p.done:
	case <-timer.C:
		err = fmt.Errorf("%s did not stop within %s; killed", p.cmd.Path, grace)
	case <-ctx.Done():
		err = fmt.Errorf("stop %s: %w; killed", p.cmd.Path, ctx.Err())
	}
	// Kill whatever is left of the group (backends, a hung server) and reap.
	killGroup(p.cmd)
	<-p.done
	return err
}

// failure wraps err with what the server printed.
func (p *proc) failure(what string, err error) error {
	if out := p.out.String(); out != "" {
		return fmt.Errorf("%s: %w\nserver output:\n%s", what, err, out)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// waitReady polls ready every interval until it succeeds, the process exits,
// or ctx ends.
func waitReady(ctx context.Context, p *proc, ready func(context.Context) error) error {
	var last error
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		if p.exited() {
			return errExited
		}
		attempt, cancel := context.WithTimeout(ctx, time.Second)
		last = ready(attempt)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for server: %w (last attempt: %w)", ctx.Err(), last)
		case <-p.done:
			return errExited
		case <-tick.C:
		}
	}
}

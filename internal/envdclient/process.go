package envdclient

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/proto/envd/process"
)

// keepaliveHeader asks envd for a keepalive event on quiet streams, so a
// process that prints nothing for minutes does not look like a dead link to
// anything between envd and the client.
const keepaliveHeader = "Keepalive-Ping-Interval"

// keepaliveSeconds is the interval asked for, in seconds.
const keepaliveSeconds = "30"

// StartRequest starts a process through envd.
type StartRequest struct {
	Cmd  string
	Args []string
	Env  map[string]string
	Cwd  string
	User string
	Tag  string
	// Stdin keeps the process's stdin open for SendInput until CloseStdin.
	Stdin bool
	// PTY runs the process on a terminal of this size when non-nil.
	PTY *PTYSize
}

// PTYSize is a terminal's size in cells.
type PTYSize struct{ Cols, Rows uint32 }

// ProcessStream is one Start or Connect stream of envd. Next skips envd's
// keepalives; Close ends the stream without affecting the process.
type ProcessStream struct {
	receive func() bool
	msg     func() *process.ProcessEvent
	err     func() error
	close   func() error
}

// Next returns the next event. After the last event it returns the
// stream's error, or ErrStreamEnded when the stream ended cleanly.
func (s *ProcessStream) Next() (*process.ProcessEvent, error) {
	for s.receive() {
		ev := s.msg()
		if ev.GetKeepalive() != nil || ev.GetEvent() == nil {
			continue
		}
		return ev, nil
	}
	if err := s.err(); err != nil {
		return nil, err
	}
	return nil, ErrStreamEnded
}

// Close ends the stream.
func (s *ProcessStream) Close() error { return s.close() }

// ErrStreamEnded is returned by Next after the last event of a stream that
// ended cleanly.
var ErrStreamEnded = errors.New("process stream ended")

// StartProcess starts a process and returns its event stream, whose first
// event carries the pid.
func (c *Client) StartProcess(ctx context.Context, in StartRequest) (*ProcessStream, error) {
	cfg := &process.ProcessConfig{Cmd: in.Cmd, Args: in.Args, Envs: in.Env}
	if in.Cwd != "" {
		cfg.Cwd = &in.Cwd
	}
	msg := &process.StartRequest{Process: cfg, Stdin: &in.Stdin}
	if in.Tag != "" {
		msg.Tag = &in.Tag
	}
	if in.PTY != nil {
		msg.Pty = &process.PTY{Size: &process.PTY_Size{Cols: in.PTY.Cols, Rows: in.PTY.Rows}}
	}
	req := connect.NewRequest(msg)
	req.Header().Set(keepaliveHeader, keepaliveSeconds)
	if in.User != "" {
		req.Header().Set("Authorization", basicUser(in.User))
	}
	s, err := c.process.Start(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("start process %q: %w", in.Cmd, err)
	}
	return &ProcessStream{
		receive: s.Receive,
		msg:     func() *process.ProcessEvent { return s.Msg().GetEvent() },
		err:     s.Err,
		close:   s.Close,
	}, nil
}

// ConnectProcess attaches to a running process's events from now on.
func (c *Client) ConnectProcess(ctx context.Context, sel *process.ProcessSelector) (*ProcessStream, error) {
	req := connect.NewRequest(&process.ConnectRequest{Process: sel})
	req.Header().Set(keepaliveHeader, keepaliveSeconds)
	s, err := c.process.Connect(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("attach to process %s: %w", selName(sel), err)
	}
	return &ProcessStream{
		receive: s.Receive,
		msg:     func() *process.ProcessEvent { return s.Msg().GetEvent() },
		err:     s.Err,
		close:   s.Close,
	}, nil
}

// ListProcesses returns the processes envd started that still run.
func (c *Client) ListProcesses(ctx context.Context) ([]*process.ProcessInfo, error) {
	res, err := c.process.List(ctx, connect.NewRequest(&process.ListRequest{}))
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	return res.Msg.GetProcesses(), nil
}

// Signal sends sig to a process.
func (c *Client) Signal(ctx context.Context, sel *process.ProcessSelector, sig process.Signal) error {
	_, err := c.process.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{Process: sel, Signal: sig}))
	if err != nil {
		return fmt.Errorf("signal process %s: %w", selName(sel), err)
	}
	return nil
}

// SendInput writes data to a process's stdin, or its terminal when pty.
func (c *Client) SendInput(ctx context.Context, sel *process.ProcessSelector, data []byte, pty bool) error {
	in := &process.ProcessInput{Input: &process.ProcessInput_Stdin{Stdin: data}}
	if pty {
		in.Input = &process.ProcessInput_Pty{Pty: data}
	}
	_, err := c.process.SendInput(ctx, connect.NewRequest(&process.SendInputRequest{Process: sel, Input: in}))
	if err != nil {
		return fmt.Errorf("send input to process %s: %w", selName(sel), err)
	}
	return nil
}

// CloseStdin closes a process's stdin, so it reads end of file.
func (c *Client) CloseStdin(ctx context.Context, sel *process.ProcessSelector) error {
	if _, err := c.process.CloseStdin(ctx, connect.NewRequest(&process.CloseStdinRequest{Process: sel})); err != nil {
		return fmt.Errorf("close stdin of process %s: %w", selName(sel), err)
	}
	return nil
}

// ResizePTY changes a process's terminal size.
func (c *Client) ResizePTY(ctx context.Context, sel *process.ProcessSelector, size PTYSize) error {
	_, err := c.process.Update(ctx, connect.NewRequest(&process.UpdateRequest{
		Process: sel,
		Pty:     &process.PTY{Size: &process.PTY_Size{Cols: size.Cols, Rows: size.Rows}},
	}))
	if err != nil {
		return fmt.Errorf("resize terminal of process %s: %w", selName(sel), err)
	}
	return nil
}

func selName(sel *process.ProcessSelector) string {
	if t := sel.GetTag(); t != "" {
		return fmt.Sprintf("tagged %q", t)
	}
	return fmt.Sprint(sel.GetPid())
}

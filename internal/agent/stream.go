package agent

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/internal/envdclient"
	"github.com/wrenn/wrenn/proto/envd/process"
	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
)

// envdFor returns the envd client of a running sandbox and marks an RPC in
// flight on it until done is called: the whole of a stream counts as
// activity, so a long PTY session never looks idle.
func (s *Service) envdFor(sandboxID string) (envd *envdclient.Client, done func(), err error) {
	sb, err := s.m.get(sandboxID)
	if err != nil {
		return nil, nil, err
	}
	return s.m.begin(sb)
}

func startRequest(r *hostagentv1.StartProcessRequest) (envdclient.StartRequest, error) {
	if r.GetCmd() == "" {
		return envdclient.StartRequest{}, fmt.Errorf("%w: cmd is empty", ErrInvalid)
	}
	in := envdclient.StartRequest{
		Cmd: r.GetCmd(), Args: r.GetArgs(), Env: r.GetEnvs(), Cwd: r.GetCwd(),
		User: r.GetUser(), Tag: r.GetTag(), Stdin: r.GetStdin(),
	}
	if p := r.GetPty(); p != nil {
		in.PTY = &envdclient.PTYSize{Cols: p.GetCols(), Rows: p.GetRows()}
	}
	return in, nil
}

// StartProcess implements the RPC: it relays envd's Start stream.
func (s *Service) StartProcess(ctx context.Context, req *connect.Request[hostagentv1.StartProcessRequest], stream *connect.ServerStream[hostagentv1.ProcessEvent]) error {
	in, err := startRequest(req.Msg)
	if err != nil {
		return connectError(err)
	}
	envd, done, err := s.envdFor(req.Msg.GetSandboxId())
	if err != nil {
		return connectError(err)
	}
	defer done()
	ps, err := envd.StartProcess(ctx, in)
	if err != nil {
		return connectError(err)
	}
	return relay(ps, stream)
}

// StartBackground implements the RPC: it starts the process and leaves it
// running once envd reported its pid.
func (s *Service) StartBackground(ctx context.Context, req *connect.Request[hostagentv1.StartProcessRequest]) (*connect.Response[hostagentv1.StartBackgroundResponse], error) {
	in, err := startRequest(req.Msg)
	if err != nil {
		return nil, connectError(err)
	}
	envd, done, err := s.envdFor(req.Msg.GetSandboxId())
	if err != nil {
		return nil, connectError(err)
	}
	defer done()
	// The stream is only how envd reports the pid: closing it leaves the
	// process running.
	ps, err := envd.StartProcess(ctx, in)
	if err != nil {
		return nil, connectError(err)
	}
	defer ps.Close()
	ev, err := ps.Next()
	if err != nil {
		return nil, connectError(fmt.Errorf("wait for process %q to start: %w", in.Cmd, err))
	}
	if ev.GetStart() == nil {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("envd's first event for %q was not its start", in.Cmd))
	}
	return connect.NewResponse(&hostagentv1.StartBackgroundResponse{Pid: ev.GetStart().GetPid(), Tag: in.Tag}), nil
}

// AttachProcess implements the RPC: it relays envd's Connect stream.
func (s *Service) AttachProcess(ctx context.Context, req *connect.Request[hostagentv1.AttachProcessRequest], stream *connect.ServerStream[hostagentv1.ProcessEvent]) error {
	sel, err := selector(req.Msg.GetProcess())
	if err != nil {
		return connectError(err)
	}
	envd, done, err := s.envdFor(req.Msg.GetSandboxId())
	if err != nil {
		return connectError(err)
	}
	defer done()
	ps, err := envd.ConnectProcess(ctx, sel)
	if err != nil {
		return connectError(err)
	}
	return relay(ps, stream)
}

// relay forwards a process's events until its end event. A stream that
// ends without one (the sandbox was paused or destroyed underneath) is an
// error, so the caller never mistakes it for an exit.
func relay(ps *envdclient.ProcessStream, stream *connect.ServerStream[hostagentv1.ProcessEvent]) error {
	defer ps.Close()
	for {
		ev, err := ps.Next()
		if errors.Is(err, envdclient.ErrStreamEnded) {
			return connect.NewError(connect.CodeUnavailable, errors.New("the process stream ended before the process did"))
		}
		if err != nil {
			return connectError(err)
		}
		out := toProcessEvent(ev)
		if out == nil {
			continue
		}
		if err := stream.Send(out); err != nil {
			return err
		}
		if out.GetEnd() != nil {
			return nil
		}
	}
}

func toProcessEvent(ev *process.ProcessEvent) *hostagentv1.ProcessEvent {
	switch {
	case ev.GetStart() != nil:
		return &hostagentv1.ProcessEvent{Event: &hostagentv1.ProcessEvent_Start_{Start: &hostagentv1.ProcessEvent_Start{Pid: ev.GetStart().GetPid()}}}
	case ev.GetEnd() != nil:
		e := ev.GetEnd()
		return &hostagentv1.ProcessEvent{Event: &hostagentv1.ProcessEvent_End_{End: &hostagentv1.ProcessEvent_End{
			ExitCode: e.GetExitCode(), Exited: e.GetExited(), Status: e.GetStatus(), Error: e.GetError(),
		}}}
	case ev.GetData() != nil:
		d := ev.GetData()
		switch o := d.GetOutput().(type) {
		case *process.ProcessEvent_DataEvent_Stdout:
			return &hostagentv1.ProcessEvent{Event: &hostagentv1.ProcessEvent_Stdout{Stdout: o.Stdout}}
		case *process.ProcessEvent_DataEvent_Stderr:
			return &hostagentv1.ProcessEvent{Event: &hostagentv1.ProcessEvent_Stderr{Stderr: o.Stderr}}
		case *process.ProcessEvent_DataEvent_Pty:
			return &hostagentv1.ProcessEvent{Event: &hostagentv1.ProcessEvent_Pty{Pty: o.Pty}}
		}
	}
	return nil
}

// selector checks that a request names a process by pid or tag.
func selector(sel *hostagentv1.ProcessSelector) (*process.ProcessSelector, error) {
	switch {
	case sel.GetPid() != 0:
		return &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: sel.GetPid()}}, nil
	case sel.GetTag() != "":
		return &process.ProcessSelector{Selector: &process.ProcessSelector_Tag{Tag: sel.GetTag()}}, nil
	}
	return nil, fmt.Errorf("%w: process must name a pid or a tag", ErrInvalid)
}

// ListProcesses implements the RPC.
func (s *Service) ListProcesses(ctx context.Context, req *connect.Request[hostagentv1.ListProcessesRequest]) (*connect.Response[hostagentv1.ListProcessesResponse], error) {
	envd, done, err := s.envdFor(req.Msg.GetSandboxId())
	if err != nil {
		return nil, connectError(err)
	}
	defer done()
	procs, err := envd.ListProcesses(ctx)
	if err != nil {
		return nil, connectError(err)
	}
	out := make([]*hostagentv1.ProcessInfo, 0, len(procs))
	for _, p := range procs {
		out = append(out, &hostagentv1.ProcessInfo{
			Pid: p.GetPid(), Tag: p.GetTag(), Cmd: p.GetConfig().GetCmd(),
			Args: p.GetConfig().GetArgs(), Cwd: p.GetConfig().GetCwd(),
		})
	}
	return connect.NewResponse(&hostagentv1.ListProcessesResponse{Processes: out}), nil
}

// withProcess runs fn on a running sandbox's envd for a request that names
// a process; it is the shape of every unary process RPC.
func (s *Service) withProcess(sandboxID string, sel *hostagentv1.ProcessSelector, fn func(*envdclient.Client, *process.ProcessSelector) error) error {
	ps, err := selector(sel)
	if err != nil {
		return connectError(err)
	}
	envd, done, err := s.envdFor(sandboxID)
	if err != nil {
		return connectError(err)
	}
	defer done()
	return connectError(fn(envd, ps))
}

// SignalProcess implements the RPC.
func (s *Service) SignalProcess(ctx context.Context, req *connect.Request[hostagentv1.SignalProcessRequest]) (*connect.Response[hostagentv1.SignalProcessResponse], error) {
	var sig process.Signal
	switch req.Msg.GetSignal() {
	case hostagentv1.Signal_SIGNAL_SIGTERM:
		sig = process.Signal_SIGNAL_SIGTERM
	case hostagentv1.Signal_SIGNAL_SIGKILL, hostagentv1.Signal_SIGNAL_UNSPECIFIED:
		sig = process.Signal_SIGNAL_SIGKILL
	default:
		return nil, connectError(fmt.Errorf("%w: signal %s is not SIGTERM or SIGKILL", ErrInvalid, req.Msg.GetSignal()))
	}
	err := s.withProcess(req.Msg.GetSandboxId(), req.Msg.GetProcess(), func(c *envdclient.Client, sel *process.ProcessSelector) error {
		return c.Signal(ctx, sel, sig)
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&hostagentv1.SignalProcessResponse{}), nil
}

// SendInput implements the RPC.
func (s *Service) SendInput(ctx context.Context, req *connect.Request[hostagentv1.SendInputRequest]) (*connect.Response[hostagentv1.SendInputResponse], error) {
	err := s.withProcess(req.Msg.GetSandboxId(), req.Msg.GetProcess(), func(c *envdclient.Client, sel *process.ProcessSelector) error {
		return c.SendInput(ctx, sel, req.Msg.GetData(), req.Msg.GetPty())
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&hostagentv1.SendInputResponse{}), nil
}

// CloseStdin implements the RPC.
func (s *Service) CloseStdin(ctx context.Context, req *connect.Request[hostagentv1.CloseStdinRequest]) (*connect.Response[hostagentv1.CloseStdinResponse], error) {
	err := s.withProcess(req.Msg.GetSandboxId(), req.Msg.GetProcess(), func(c *envdclient.Client, sel *process.ProcessSelector) error {
		return c.CloseStdin(ctx, sel)
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&hostagentv1.CloseStdinResponse{}), nil
}

// maxPTYCells bounds a terminal dimension; envd caps at 65535 anyway, this
// refuses nonsense early and by name.
const maxPTYCells = 4096

// ResizePty implements the RPC.
func (s *Service) ResizePty(ctx context.Context, req *connect.Request[hostagentv1.ResizePtyRequest]) (*connect.Response[hostagentv1.ResizePtyResponse], error) {
	size := req.Msg.GetSize()
	if size.GetCols() == 0 || size.GetRows() == 0 || size.GetCols() > maxPTYCells || size.GetRows() > maxPTYCells {
		return nil, connectError(fmt.Errorf("%w: terminal size %dx%d must be between 1 and %d in each dimension", ErrInvalid, size.GetCols(), size.GetRows(), maxPTYCells))
	}
	err := s.withProcess(req.Msg.GetSandboxId(), req.Msg.GetProcess(), func(c *envdclient.Client, sel *process.ProcessSelector) error {
		return c.ResizePTY(ctx, sel, envdclient.PTYSize{Cols: size.GetCols(), Rows: size.GetRows()})
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&hostagentv1.ResizePtyResponse{}), nil
}

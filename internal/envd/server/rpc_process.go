package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/internal/envd/account"
	"github.com/wrenn/wrenn/internal/envd/process"
	pb "github.com/wrenn/wrenn/proto/envd/process"
	"github.com/wrenn/wrenn/proto/envd/process/processconnect"
)

// errInvalid marks request problems found in this package (headers, users).
var errInvalid = errors.New("invalid request")

// KeepaliveHeader names the request header with the number of seconds
// between keepalive events on a quiet stream; the SDKs send 50.
const KeepaliveHeader = "Keepalive-Ping-Interval"

const (
	defaultKeepalive = 50 * time.Second
	minKeepalive     = 10 * time.Millisecond
)

// keepaliveInterval reads KeepaliveHeader; missing or unusable values give
// the default.
func keepaliveInterval(v string) time.Duration {
	secs, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || secs <= 0 || math.IsNaN(secs) || math.IsInf(secs, 0) || secs > 24*3600 {
		return defaultKeepalive
	}
	return max(time.Duration(secs*float64(time.Second)), minKeepalive)
}

// connectError maps this daemon's error classes to Connect codes, once.
func connectError(err error) error {
	code := connect.CodeInternal
	switch {
	case errors.Is(err, process.ErrNotFound):
		code = connect.CodeNotFound
	case errors.Is(err, process.ErrInvalid), errors.Is(err, errInvalid):
		code = connect.CodeInvalidArgument
	case errors.Is(err, process.ErrConflict):
		code = connect.CodeAlreadyExists
	case errors.Is(err, process.ErrPrecondition):
		code = connect.CodeFailedPrecondition
	case errors.Is(err, process.ErrPermission), errors.Is(err, os.ErrPermission):
		code = connect.CodePermissionDenied
	case errors.Is(err, process.ErrClosed):
		code = connect.CodeUnavailable
	case errors.Is(err, context.Canceled):
		code = connect.CodeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		code = connect.CodeDeadlineExceeded
	}
	return connect.NewError(code, err)
}

// processService implements process.Process over the Manager.
type processService struct {
	s *Server
}

var _ processconnect.ProcessHandler = (*processService)(nil)

func (ps *processService) selected(sel *pb.ProcessSelector) (*process.Proc, error) {
	switch v := sel.GetSelector().(type) {
	case *pb.ProcessSelector_Pid:
		return ps.s.procs.ByPID(int(v.Pid))
	case *pb.ProcessSelector_Tag:
		return ps.s.procs.ByTag(v.Tag)
	default:
		return nil, fmt.Errorf("%w: process selector needs a pid or a tag", errInvalid)
	}
}

// credential decides whether the process needs an identity switch: as root
// envd becomes anyone; otherwise it can only run as itself.
func credential(u account.User) (*process.Credential, error) {
	euid := os.Geteuid()
	if euid == 0 {
		return &process.Credential{UID: u.UID, GID: u.GID, Groups: u.Groups}, nil
	}
	if uint32(euid) == u.UID {
		return nil, nil
	}
	return nil, fmt.Errorf("%w: envd runs as uid %d and cannot start processes as user %q", process.ErrPermission, euid, u.Name)
}

func (ps *processService) Start(ctx context.Context, req *connect.Request[pb.StartRequest], stream *connect.ServerStream[pb.StartResponse]) error {
	c, err := ps.s.callerOf(req.Header())
	if err != nil {
		return connectError(err)
	}
	msg := req.Msg
	cfg := msg.GetProcess()
	if cfg == nil || cfg.GetCmd() == "" {
		return connectError(fmt.Errorf("%w: process.cmd is empty", process.ErrInvalid))
	}
	cred, err := credential(c.user)
	if err != nil {
		return connectError(err)
	}
	dir := c.workdir
	if cfg.Cwd != nil && cfg.GetCwd() != "" {
		dir = c.resolvePath(cfg.GetCwd())
	}
	if dir == "" {
		dir = c.user.Home
	}
	identity := map[string]string{}
	for _, kv := range c.user.Env() {
		k, v, _ := strings.Cut(kv, "=")
		identity[k] = v
	}
	env := mergeEnv(ps.s.opts.BaseEnv, identity, c.envs, cfg.GetEnvs())
	if !hasKey(env, "PATH") {
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	spec := process.Spec{
		Cmd: cfg.GetCmd(), Args: cfg.GetArgs(), Env: env, Dir: dir, Cred: cred,
		Tag: msg.GetTag(), Stdin: msg.GetStdin(), Envs: cfg.GetEnvs(),
	}
	if msg.Pty != nil {
		size := msg.GetPty().GetSize()
		spec.PTY = &process.Size{Cols: clampCells(size.GetCols(), 80), Rows: clampCells(size.GetRows(), 24)}
	}
	p, sub, err := ps.s.procs.Start(spec)
	if err != nil {
		ps.s.log.Info("start process refused", "cmd", spec.Cmd, "user", c.user.Name, "error", err)
		return connectError(err)
	}
	defer sub.Close()
	send := func(ev *pb.ProcessEvent) error { return stream.Send(&pb.StartResponse{Event: ev}) }
	if err := send(startEvent(p.PID)); err != nil {
		return err
	}
	return pump(ctx, sub, keepaliveInterval(req.Header().Get(KeepaliveHeader)), send)
}

func hasKey(env []string, key string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, key+"=") {
			return true
		}
	}
	return false
}

// clampCells turns a wire size into a terminal size: 0 means the default,
// anything beyond what a winsize holds is capped.
func clampCells(v uint32, def uint16) uint16 {
	switch {
	case v == 0:
		return def
	case v > math.MaxUint16:
		return math.MaxUint16
	default:
		return uint16(v)
	}
}

func (ps *processService) Connect(ctx context.Context, req *connect.Request[pb.ConnectRequest], stream *connect.ServerStream[pb.ConnectResponse]) error {
	p, err := ps.selected(req.Msg.GetProcess())
	if err != nil {
		return connectError(err)
	}
	sub := p.Subscribe()
	defer sub.Close()
	send := func(ev *pb.ProcessEvent) error { return stream.Send(&pb.ConnectResponse{Event: ev}) }
	if err := send(startEvent(p.PID)); err != nil {
		return err
	}
	return pump(ctx, sub, keepaliveInterval(req.Header().Get(KeepaliveHeader)), send)
}

func startEvent(pid int) *pb.ProcessEvent {
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: uint32(pid)}}}
}

// pump forwards a subscription to a stream until the end event was sent or
// the client went away, with a keepalive event whenever the stream was quiet
// for interval. Leaving never affects the process.
func pump(ctx context.Context, sub *process.Subscription, interval time.Duration, send func(*pb.ProcessEvent) error) error {
	keepalive := time.NewTimer(interval)
	defer keepalive.Stop()
	for {
		select {
		case <-ctx.Done():
			return connectError(ctx.Err())
		case <-keepalive.C:
			if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}}); err != nil {
				return err
			}
			keepalive.Reset(interval)
		case ev, ok := <-sub.Events():
			if !ok {
				return nil
			}
			if err := send(toEvent(ev)); err != nil {
				return err
			}
			if ev.End != nil {
				return nil
			}
			keepalive.Reset(interval)
		}
	}
}

func toEvent(ev process.Event) *pb.ProcessEvent {
	if e := ev.End; e != nil {
		end := &pb.ProcessEvent_EndEvent{ExitCode: int32(e.ExitCode), Exited: e.Exited, Status: e.Status}
		if e.Error != "" {
			end.Error = &e.Error
		}
		return &pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: end}}
	}
	data := &pb.ProcessEvent_DataEvent{}
	switch ev.Stream {
	case process.Stdout:
		data.Output = &pb.ProcessEvent_DataEvent_Stdout{Stdout: ev.Data}
	case process.Stderr:
		data.Output = &pb.ProcessEvent_DataEvent_Stderr{Stderr: ev.Data}
	default:
		data.Output = &pb.ProcessEvent_DataEvent_Pty{Pty: ev.Data}
	}
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: data}}
}

func (ps *processService) List(context.Context, *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	procs := ps.s.procs.List()
	out := &pb.ListResponse{Processes: make([]*pb.ProcessInfo, 0, len(procs))}
	for _, p := range procs {
		info := &pb.ProcessInfo{
			Pid:    uint32(p.PID),
			Config: &pb.ProcessConfig{Cmd: p.Cmd, Args: p.Args, Envs: p.Envs, Cwd: &p.Dir},
		}
		if p.Tag != "" {
			info.Tag = &p.Tag
		}
		out.Processes = append(out.Processes, info)
	}
	return connect.NewResponse(out), nil
}

func (ps *processService) writeInput(ctx context.Context, p *process.Proc, in *pb.ProcessInput) error {
	switch v := in.GetInput().(type) {
	case *pb.ProcessInput_Stdin:
		return p.WriteStdin(ctx, v.Stdin)
	case *pb.ProcessInput_Pty:
		return p.WritePTY(ctx, v.Pty)
	default:
		return fmt.Errorf("%w: input needs stdin or pty bytes", errInvalid)
	}
}

func (ps *processService) SendInput(ctx context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	p, err := ps.selected(req.Msg.GetProcess())
	if err != nil {
		return nil, connectError(err)
	}
	if err := ps.writeInput(ctx, p, req.Msg.GetInput()); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

func (ps *processService) StreamInput(ctx context.Context, stream *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	var p *process.Proc
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *pb.StreamInputRequest_Start:
			found, err := ps.selected(ev.Start.GetProcess())
			if err != nil {
				return nil, connectError(err)
			}
			p = found
		case *pb.StreamInputRequest_Data:
			if p == nil {
				return nil, connectError(fmt.Errorf("%w: the first StreamInput message must be a start event naming the process", errInvalid))
			}
			if err := ps.writeInput(ctx, p, ev.Data.GetInput()); err != nil {
				return nil, connectError(err)
			}
		case *pb.StreamInputRequest_Keepalive:
		default:
			return nil, connectError(fmt.Errorf("%w: empty StreamInput message", errInvalid))
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.StreamInputResponse{}), nil
}

func (ps *processService) SendSignal(_ context.Context, req *connect.Request[pb.SendSignalRequest]) (*connect.Response[pb.SendSignalResponse], error) {
	p, err := ps.selected(req.Msg.GetProcess())
	if err != nil {
		return nil, connectError(err)
	}
	var sig syscall.Signal
	switch req.Msg.GetSignal() {
	case pb.Signal_SIGNAL_SIGKILL:
		sig = syscall.SIGKILL
	case pb.Signal_SIGNAL_SIGTERM:
		sig = syscall.SIGTERM
	default:
		return nil, connectError(fmt.Errorf("%w: signal must be SIGNAL_SIGTERM or SIGNAL_SIGKILL, got %s", errInvalid, req.Msg.GetSignal()))
	}
	if err := p.Signal(sig); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&pb.SendSignalResponse{}), nil
}

func (ps *processService) CloseStdin(_ context.Context, req *connect.Request[pb.CloseStdinRequest]) (*connect.Response[pb.CloseStdinResponse], error) {
	p, err := ps.selected(req.Msg.GetProcess())
	if err != nil {
		return nil, connectError(err)
	}
	if err := p.CloseStdin(); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&pb.CloseStdinResponse{}), nil
}

func (ps *processService) Update(_ context.Context, req *connect.Request[pb.UpdateRequest]) (*connect.Response[pb.UpdateResponse], error) {
	p, err := ps.selected(req.Msg.GetProcess())
	if err != nil {
		return nil, connectError(err)
	}
	if req.Msg.Pty != nil {
		size := req.Msg.GetPty().GetSize()
		if err := p.Resize(process.Size{Cols: clampCells(size.GetCols(), 0), Rows: clampCells(size.GetRows(), 0)}); err != nil {
			return nil, connectError(err)
		}
	}
	return connect.NewResponse(&pb.UpdateResponse{}), nil
}

package agent

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/wrenn/wrenn/internal/envdclient"
	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
	"github.com/wrenn/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// Service implements the host agent's RPC surface over a Manager. It only
// translates between wire types and the manager.
type Service struct {
	m           *Manager
	runtimeName string
	envdVersion string
	// metrics answers GetSandboxMetrics; nil makes it Unimplemented.
	metrics *MetricsSampler
}

var _ hostagentv1connect.HostAgentServiceHandler = (*Service)(nil)

// defaultExecTimeout bounds an exec that names no timeout.
const defaultExecTimeout = 60 * time.Second

// maxExecTimeout bounds every collected exec; longer work belongs in a
// background process.
const maxExecTimeout = time.Hour

// CreateSandbox implements the RPC.
func (s *Service) CreateSandbox(ctx context.Context, req *connect.Request[hostagentv1.CreateSandboxRequest]) (*connect.Response[hostagentv1.CreateSandboxResponse], error) {
	r := req.Msg
	sb, err := s.m.Create(ctx, CreateRequest{
		ID:            r.GetSandboxId(),
		Template:      r.GetTemplate(),
		Limits:        Limits{VCPUs: r.GetVcpus(), MemoryMB: r.GetMemoryMb(), DiskMB: r.GetDiskMb()},
		Timeout:       time.Duration(r.GetTimeoutSec()) * time.Second,
		Env:           r.GetEnvs(),
		AllowInternet: r.GetAllowInternet(),
	})
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&hostagentv1.CreateSandboxResponse{Sandbox: s.toProto(sb.snapshot())}), nil
}

// DestroySandbox implements the RPC.
func (s *Service) DestroySandbox(ctx context.Context, req *connect.Request[hostagentv1.DestroySandboxRequest]) (*connect.Response[hostagentv1.DestroySandboxResponse], error) {
	if err := s.m.Destroy(ctx, req.Msg.GetSandboxId()); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&hostagentv1.DestroySandboxResponse{}), nil
}

// GetSandbox implements the RPC.
func (s *Service) GetSandbox(_ context.Context, req *connect.Request[hostagentv1.GetSandboxRequest]) (*connect.Response[hostagentv1.GetSandboxResponse], error) {
	sb, err := s.m.Get(req.Msg.GetSandboxId())
	if err != nil {
		return nil, connectError(err)
	}
	s.m.touch(sb)
	sb.op.Lock()
	snap := sb.snapshot()
	sb.op.Unlock()
	return connect.NewResponse(&hostagentv1.GetSandboxResponse{Sandbox: s.toProto(snap)}), nil
}

// ListSandboxes implements the RPC.
func (s *Service) ListSandboxes(context.Context, *connect.Request[hostagentv1.ListSandboxesRequest]) (*connect.Response[hostagentv1.ListSandboxesResponse], error) {
	list := s.m.List()
	out := make([]*hostagentv1.Sandbox, 0, len(list))
	for _, sb := range list {
		out = append(out, s.toProto(sb))
	}
	// The ids are taken only once the answer is built: they are reported
	// here once, and also through the sandbox-events callback.
	return connect.NewResponse(&hostagentv1.ListSandboxesResponse{Sandboxes: out, AutoPausedIds: s.m.TakeAutoPaused()}), nil
}

// PauseSandbox implements the RPC.
func (s *Service) PauseSandbox(ctx context.Context, req *connect.Request[hostagentv1.PauseSandboxRequest]) (*connect.Response[hostagentv1.PauseSandboxResponse], error) {
	snap, err := s.m.Pause(ctx, req.Msg.GetSandboxId())
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&hostagentv1.PauseSandboxResponse{Sandbox: s.toProto(snap)}), nil
}

// ResumeSandbox implements the RPC.
func (s *Service) ResumeSandbox(ctx context.Context, req *connect.Request[hostagentv1.ResumeSandboxRequest]) (*connect.Response[hostagentv1.ResumeSandboxResponse], error) {
	snap, err := s.m.Resume(ctx, req.Msg.GetSandboxId())
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&hostagentv1.ResumeSandboxResponse{Sandbox: s.toProto(snap)}), nil
}

// PingSandbox implements the RPC.
func (s *Service) PingSandbox(_ context.Context, req *connect.Request[hostagentv1.PingSandboxRequest]) (*connect.Response[hostagentv1.PingSandboxResponse], error) {
	if err := s.m.Ping(req.Msg.GetSandboxId()); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&hostagentv1.PingSandboxResponse{}), nil
}

// SetSandboxTimeout implements the RPC.
func (s *Service) SetSandboxTimeout(_ context.Context, req *connect.Request[hostagentv1.SetSandboxTimeoutRequest]) (*connect.Response[hostagentv1.SetSandboxTimeoutResponse], error) {
	timeout := time.Duration(req.Msg.GetTimeoutSec()) * time.Second
	if err := s.m.SetTimeout(req.Msg.GetSandboxId(), timeout); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&hostagentv1.SetSandboxTimeoutResponse{}), nil
}

// Exec implements the RPC.
func (s *Service) Exec(ctx context.Context, req *connect.Request[hostagentv1.ExecRequest]) (*connect.Response[hostagentv1.ExecResponse], error) {
	r := req.Msg
	timeout := time.Duration(r.GetTimeoutSec()) * time.Second
	if timeout == 0 {
		timeout = defaultExecTimeout
	}
	timeout = min(timeout, maxExecTimeout)
	res, err := s.m.Exec(ctx, r.GetSandboxId(), envdclient.ExecRequest{
		Cmd: r.GetCmd(), Args: r.GetArgs(), Env: r.GetEnvs(), Cwd: r.GetCwd(),
		User: r.GetUser(), Stdin: r.GetStdin(), Timeout: timeout,
	})
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&hostagentv1.ExecResponse{
		Stdout:     res.Stdout,
		Stderr:     res.Stderr,
		ExitCode:   res.ExitCode,
		TimedOut:   res.TimedOut,
		DurationMs: uint64(res.Duration.Milliseconds()),
	}), nil
}

func (s *Service) toProto(sb Snapshot) *hostagentv1.Sandbox {
	p := &hostagentv1.Sandbox{
		SandboxId:   sb.ID,
		Template:    sb.Template,
		Runtime:     s.runtimeName,
		Vcpus:       sb.Limits.VCPUs,
		MemoryMb:    sb.Limits.MemoryMB,
		DiskMb:      sb.Limits.DiskMB,
		EnvdVersion: s.envdVersion,
	}
	switch sb.State {
	case StateRunning:
		p.State = hostagentv1.SandboxState_SANDBOX_STATE_RUNNING
	case StatePaused:
		p.State = hostagentv1.SandboxState_SANDBOX_STATE_PAUSED
	}
	if sb.HostIP != nil {
		p.HostIp = sb.HostIP.String()
		p.GuestIp = sb.GuestIP.String()
	}
	if !sb.StartedAt.IsZero() {
		p.StartedAt = timestamppb.New(sb.StartedAt)
	}
	return p
}

package hostclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
	"github.com/wrenn/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// NewTransport returns the transport for agent RPCs: HTTP/1.1 only (with
// HTTP/2 one slow sandbox RPC stalled every other stream on the shared
// connection), pooled per host, with bounded dials. It has no response
// timeout: Exec may legitimately run for minutes, so every call carries its
// own context deadline instead. tlsCfg (nil: none) is used for agents whose
// address is https: the internal CA and the control plane's client
// certificate (mutual TLS).
func NewTransport(tlsCfg *tls.Config) *http.Transport {
	return &http.Transport{
		TLSClientConfig: tlsCfg,
		Proxy:           nil,
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2: false,
		// A non-nil empty map switches HTTP/2 off even for TLS.
		TLSNextProto:          map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// Pool hands out one cached Connect client per host. It is safe for
// concurrent use; a host whose address changed gets a new client.
type Pool struct {
	client *http.Client

	mu    sync.Mutex
	hosts map[string]*connectAgent
}

// NewPool returns an empty pool with its own transport, dialing https
// agents with tlsCfg (nil: plain HTTP agents only, or public certificates).
func NewPool(tlsCfg *tls.Config) *Pool {
	return &Pool{client: &http.Client{Transport: NewTransport(tlsCfg)}, hosts: map[string]*connectAgent{}}
}

// Agent returns the client of hostID at address (the agent's base URL).
func (p *Pool) Agent(hostID, address string) (Agent, error) {
	if !strings.HasPrefix(address, "http://") && !strings.HasPrefix(address, "https://") {
		return nil, &Error{Op: "dial", Class: ErrUnavailable, Err: fmt.Errorf("host %s has no usable address %q", hostID, address)}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if a, ok := p.hosts[hostID]; ok && a.address == address {
		return a, nil
	}
	a := &connectAgent{
		address: address,
		http:    p.client,
		rpc:     hostagentv1connect.NewHostAgentServiceClient(p.client, address),
	}
	p.hosts[hostID] = a
	return a, nil
}

// Forget drops a host's client, for a host that was deleted.
func (p *Pool) Forget(hostID string) {
	p.mu.Lock()
	delete(p.hosts, hostID)
	p.mu.Unlock()
}

// Close releases idle connections. Calls in flight are not interrupted.
func (p *Pool) Close() {
	p.client.CloseIdleConnections()
}

// connectAgent implements Agent over Connect.
type connectAgent struct {
	address string
	// http carries the agent's plain HTTP routes (file contents).
	http *http.Client
	rpc  hostagentv1connect.HostAgentServiceClient
}

var _ Agent = (*connectAgent)(nil)

func (a *connectAgent) CreateSandbox(ctx context.Context, req CreateRequest) (Sandbox, error) {
	resp, err := a.rpc.CreateSandbox(ctx, connect.NewRequest(&hostagentv1.CreateSandboxRequest{
		SandboxId:     req.SandboxID,
		Template:      req.Template,
		Vcpus:         req.VCPUs,
		MemoryMb:      req.MemoryMB,
		DiskMb:        req.DiskMB,
		TimeoutSec:    req.TimeoutSec,
		Envs:          req.Envs,
		AllowInternet: req.AllowInternet,
	}))
	if err != nil {
		return Sandbox{}, classify("create sandbox", err)
	}
	return fromProto(resp.Msg.GetSandbox()), nil
}

func (a *connectAgent) DestroySandbox(ctx context.Context, sandboxID string) error {
	_, err := a.rpc.DestroySandbox(ctx, connect.NewRequest(&hostagentv1.DestroySandboxRequest{SandboxId: sandboxID}))
	if err != nil {
		return classify("destroy sandbox", err)
	}
	return nil
}

func (a *connectAgent) Exec(ctx context.Context, req ExecRequest) (ExecResult, error) {
	resp, err := a.rpc.Exec(ctx, connect.NewRequest(&hostagentv1.ExecRequest{
		SandboxId:  req.SandboxID,
		Cmd:        req.Cmd,
		Args:       req.Args,
		Envs:       req.Env,
		Cwd:        req.Cwd,
		User:       req.User,
		TimeoutSec: req.TimeoutSec,
		Stdin:      req.Stdin,
	}))
	if err != nil {
		return ExecResult{}, classify("exec", err)
	}
	m := resp.Msg
	return ExecResult{
		Stdout:   m.GetStdout(),
		Stderr:   m.GetStderr(),
		ExitCode: int(m.GetExitCode()),
		TimedOut: m.GetTimedOut(),
		Duration: time.Duration(m.GetDurationMs()) * time.Millisecond,
	}, nil
}

func (a *connectAgent) ListSandboxes(ctx context.Context) (Listing, error) {
	resp, err := a.rpc.ListSandboxes(ctx, connect.NewRequest(&hostagentv1.ListSandboxesRequest{}))
	if err != nil {
		return Listing{}, classify("list sandboxes", err)
	}
	out := Listing{Sandboxes: make([]Sandbox, 0, len(resp.Msg.GetSandboxes())), AutoPausedIDs: resp.Msg.GetAutoPausedIds()}
	for _, s := range resp.Msg.GetSandboxes() {
		out.Sandboxes = append(out.Sandboxes, fromProto(s))
	}
	return out, nil
}

func (a *connectAgent) PauseSandbox(ctx context.Context, sandboxID string) (Sandbox, error) {
	resp, err := a.rpc.PauseSandbox(ctx, connect.NewRequest(&hostagentv1.PauseSandboxRequest{SandboxId: sandboxID}))
	if err != nil {
		return Sandbox{}, classify("pause sandbox", err)
	}
	return fromProto(resp.Msg.GetSandbox()), nil
}

func (a *connectAgent) ResumeSandbox(ctx context.Context, sandboxID string) (Sandbox, error) {
	resp, err := a.rpc.ResumeSandbox(ctx, connect.NewRequest(&hostagentv1.ResumeSandboxRequest{SandboxId: sandboxID}))
	if err != nil {
		return Sandbox{}, classify("resume sandbox", err)
	}
	return fromProto(resp.Msg.GetSandbox()), nil
}

func (a *connectAgent) PingSandbox(ctx context.Context, sandboxID string) error {
	if _, err := a.rpc.PingSandbox(ctx, connect.NewRequest(&hostagentv1.PingSandboxRequest{SandboxId: sandboxID})); err != nil {
		return classify("ping sandbox", err)
	}
	return nil
}

func (a *connectAgent) SetSandboxTimeout(ctx context.Context, sandboxID string, timeoutSec uint32) error {
	_, err := a.rpc.SetSandboxTimeout(ctx, connect.NewRequest(&hostagentv1.SetSandboxTimeoutRequest{SandboxId: sandboxID, TimeoutSec: timeoutSec}))
	if err != nil {
		return classify("set sandbox timeout", err)
	}
	return nil
}

func fromProto(s *hostagentv1.Sandbox) Sandbox {
	if s == nil {
		return Sandbox{}
	}
	out := Sandbox{
		ID:          s.GetSandboxId(),
		Template:    s.GetTemplate(),
		Runtime:     s.GetRuntime(),
		VCPUs:       s.GetVcpus(),
		MemoryMB:    s.GetMemoryMb(),
		DiskMB:      s.GetDiskMb(),
		HostIP:      s.GetHostIp(),
		GuestIP:     s.GetGuestIp(),
		EnvdVersion: s.GetEnvdVersion(),
	}
	if s.GetStartedAt() != nil {
		out.StartedAt = s.GetStartedAt().AsTime()
	}
	switch s.GetState() {
	case hostagentv1.SandboxState_SANDBOX_STATE_RUNNING:
		out.State = StateRunning
	case hostagentv1.SandboxState_SANDBOX_STATE_PAUSED:
		out.State = StatePaused
	case hostagentv1.SandboxState_SANDBOX_STATE_STOPPED:
		out.State = StateStopped
	default:
		out.State = StateUnknown
	}
	return out
}

// classify turns a Connect error into an *Error with a class.
func classify(op string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Op: op, Class: ErrTimeout, Err: err}
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return &Error{Op: op, Class: ErrUnavailable, Err: err}
	}
	e := &Error{Op: op, Message: ce.Message(), Err: err}
	switch ce.Code() {
	case connect.CodeNotFound:
		e.Class = ErrNotFound
	case connect.CodeFailedPrecondition, connect.CodeAlreadyExists, connect.CodeAborted:
		e.Class = ErrConflict
	case connect.CodeInvalidArgument, connect.CodeOutOfRange:
		e.Class = ErrInvalid
	case connect.CodeUnavailable, connect.CodeResourceExhausted:
		e.Class = ErrUnavailable
	case connect.CodeDeadlineExceeded:
		e.Class = ErrTimeout
	default:
		e.Class = ErrInternal
	}
	return e
}

package hostclient

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
	"github.com/wrenn/wrenn/proto/hostagent/v1/hostagentv1connect"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// agentServer is a scripted host agent on the real generated handler.
type agentServer struct {
	hostagentv1connect.UnimplementedHostAgentServiceHandler
	execErr error
}

func (s *agentServer) CreateSandbox(_ context.Context, r *connect.Request[hostagentv1.CreateSandboxRequest]) (*connect.Response[hostagentv1.CreateSandboxResponse], error) {
	return connect.NewResponse(&hostagentv1.CreateSandboxResponse{Sandbox: &hostagentv1.Sandbox{
		SandboxId: r.Msg.SandboxId, Template: r.Msg.Template, State: hostagentv1.SandboxState_SANDBOX_STATE_RUNNING,
		Vcpus: r.Msg.Vcpus, MemoryMb: r.Msg.MemoryMb, DiskMb: 2048, HostIp: "10.0.0.1", GuestIp: "10.0.0.2",
		StartedAt: timestamppb.New(time.Unix(1700000000, 0)), EnvdVersion: "0.1.0",
	}}), nil
}

func (s *agentServer) DestroySandbox(_ context.Context, r *connect.Request[hostagentv1.DestroySandboxRequest]) (*connect.Response[hostagentv1.DestroySandboxResponse], error) {
	return nil, connect.NewError(connect.CodeNotFound, errors.New("sandbox "+r.Msg.SandboxId+" not found"))
}

func (s *agentServer) Exec(_ context.Context, r *connect.Request[hostagentv1.ExecRequest]) (*connect.Response[hostagentv1.ExecResponse], error) {
	if s.execErr != nil {
		return nil, s.execErr
	}
	return connect.NewResponse(&hostagentv1.ExecResponse{Stdout: []byte("hi\n"), ExitCode: 3, DurationMs: 7}), nil
}

func startAgent(t *testing.T, s *agentServer, protos *atomic.Int32) string {
	t.Helper()
	_, h := hostagentv1connect.NewHostAgentServiceHandler(s)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 1 {
			protos.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestConnectAgent(t *testing.T) {
	t.Parallel()
	var notHTTP1 atomic.Int32
	srv := &agentServer{}
	url := startAgent(t, srv, &notHTTP1)
	pool := NewPool(nil)
	defer pool.Close()
	a, err := pool.Agent("host-1", url)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := pool.Agent("host-1", url)
	if a != again {
		t.Error("pool made a second client for the same host")
	}
	ctx := context.Background()

	sb, err := a.CreateSandbox(ctx, CreateRequest{SandboxID: "sb-1", Template: "minimal", VCPUs: 2, MemoryMB: 256})
	if err != nil {
		t.Fatal(err)
	}
	if sb.ID != "sb-1" || sb.State != StateRunning || sb.VCPUs != 2 || sb.HostIP != "10.0.0.1" || sb.DiskMB != 2048 ||
		!sb.StartedAt.Equal(time.Unix(1700000000, 0)) || sb.EnvdVersion != "0.1.0" {
		t.Errorf("create returned %+v", sb)
	}

	if err := a.DestroySandbox(ctx, "sb-x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("destroy unknown: %v, want ErrNotFound", err)
	}

	res, err := a.Exec(ctx, ExecRequest{SandboxID: "sb-1", Cmd: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != "hi\n" || res.ExitCode != 3 || res.Duration != 7*time.Millisecond {
		t.Errorf("exec returned %+v", res)
	}

	for code, class := range map[connect.Code]error{
		connect.CodeFailedPrecondition: ErrConflict,
		connect.CodeInvalidArgument:    ErrInvalid,
		connect.CodeUnavailable:        ErrUnavailable,
		connect.CodeDeadlineExceeded:   ErrTimeout,
		connect.CodeInternal:           ErrInternal,
	} {
		srv.execErr = connect.NewError(code, errors.New("scripted"))
		_, err := a.Exec(ctx, ExecRequest{SandboxID: "sb-1", Cmd: "x"})
		var he *Error
		if !errors.Is(err, class) || !errors.As(err, &he) || he.Message != "scripted" {
			t.Errorf("code %v gave %v, want class %v", code, err, class)
		}
	}
	srv.execErr = nil

	// ListSandboxes is unimplemented on this server: Unimplemented is internal.
	if _, err := a.ListSandboxes(ctx); !errors.Is(err, ErrInternal) {
		t.Errorf("list: %v", err)
	}
	if n := notHTTP1.Load(); n != 0 {
		t.Errorf("%d requests were not HTTP/1.1", n)
	}
}

func TestUnreachableAndBadAddress(t *testing.T) {
	t.Parallel()
	pool := NewPool(nil)
	defer pool.Close()
	if _, err := pool.Agent("host-1", "127.0.0.1:1"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("address without scheme: %v", err)
	}
	a, err := pool.Agent("host-1", "http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.ListSandboxes(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Errorf("closed port: %v, want ErrUnavailable", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	time.Sleep(time.Millisecond)
	if _, err := a.ListSandboxes(ctx); !errors.Is(err, ErrTimeout) {
		t.Errorf("expired context: %v, want ErrTimeout", err)
	}
}

// lifecycleAgent scripts the pause/resume/ping/timeout RPCs.
type lifecycleAgent struct {
	hostagentv1connect.UnimplementedHostAgentServiceHandler
	timeout atomic.Uint32
}

func (s *lifecycleAgent) PauseSandbox(_ context.Context, r *connect.Request[hostagentv1.PauseSandboxRequest]) (*connect.Response[hostagentv1.PauseSandboxResponse], error) {
	return connect.NewResponse(&hostagentv1.PauseSandboxResponse{Sandbox: &hostagentv1.Sandbox{SandboxId: r.Msg.SandboxId, State: hostagentv1.SandboxState_SANDBOX_STATE_PAUSED}}), nil
}

func (s *lifecycleAgent) ResumeSandbox(_ context.Context, r *connect.Request[hostagentv1.ResumeSandboxRequest]) (*connect.Response[hostagentv1.ResumeSandboxResponse], error) {
	return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("sandbox "+r.Msg.SandboxId+" is running"))
}

func (s *lifecycleAgent) PingSandbox(_ context.Context, r *connect.Request[hostagentv1.PingSandboxRequest]) (*connect.Response[hostagentv1.PingSandboxResponse], error) {
	return nil, connect.NewError(connect.CodeNotFound, errors.New("no such sandbox"))
}

func (s *lifecycleAgent) SetSandboxTimeout(_ context.Context, r *connect.Request[hostagentv1.SetSandboxTimeoutRequest]) (*connect.Response[hostagentv1.SetSandboxTimeoutResponse], error) {
	s.timeout.Store(r.Msg.TimeoutSec)
	return connect.NewResponse(&hostagentv1.SetSandboxTimeoutResponse{}), nil
}

func (s *lifecycleAgent) ListSandboxes(context.Context, *connect.Request[hostagentv1.ListSandboxesRequest]) (*connect.Response[hostagentv1.ListSandboxesResponse], error) {
	return connect.NewResponse(&hostagentv1.ListSandboxesResponse{
		Sandboxes:     []*hostagentv1.Sandbox{{SandboxId: "sb-a", State: hostagentv1.SandboxState_SANDBOX_STATE_PAUSED}},
		AutoPausedIds: []string{"sb-a"},
	}), nil
}

func TestConnectAgentLifecycle(t *testing.T) {
	t.Parallel()
	srv := &lifecycleAgent{}
	_, h := hostagentv1connect.NewHostAgentServiceHandler(srv)
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	pool := NewPool(nil)
	defer pool.Close()
	a, err := pool.Agent("host-1", hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if sb, err := a.PauseSandbox(ctx, "sb-a"); err != nil || sb.State != StatePaused || sb.ID != "sb-a" {
		t.Errorf("pause: %+v %v", sb, err)
	}
	if _, err := a.ResumeSandbox(ctx, "sb-a"); !errors.Is(err, ErrConflict) {
		t.Errorf("resume: %v, want ErrConflict", err)
	}
	if err := a.PingSandbox(ctx, "sb-a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("ping: %v, want ErrNotFound", err)
	}
	if err := a.SetSandboxTimeout(ctx, "sb-a", 42); err != nil || srv.timeout.Load() != 42 {
		t.Errorf("timeout: %v, agent got %d", err, srv.timeout.Load())
	}
	l, err := a.ListSandboxes(ctx)
	if err != nil || len(l.Sandboxes) != 1 || l.Sandboxes[0].State != StatePaused || len(l.AutoPausedIDs) != 1 || l.AutoPausedIDs[0] != "sb-a" {
		t.Errorf("list: %+v %v", l, err)
	}
}

// The fake refuses what the real agent refuses: pause only when running,
// resume only when paused, exec only when running.
func TestFakeModelsStates(t *testing.T) {
	t.Parallel()
	f := NewFake()
	ctx := context.Background()
	if _, err := f.PauseSandbox(ctx, "sb-x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("pause unknown: %v", err)
	}
	if _, err := f.CreateSandbox(ctx, CreateRequest{SandboxID: "sb-x"}); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		call func() error
		want error
	}{
		{"resume running", func() error { _, err := f.ResumeSandbox(ctx, "sb-x"); return err }, ErrConflict},
		{"pause", func() error { _, err := f.PauseSandbox(ctx, "sb-x"); return err }, nil},
		{"pause paused", func() error { _, err := f.PauseSandbox(ctx, "sb-x"); return err }, ErrConflict},
		{"exec paused", func() error { _, err := f.Exec(ctx, ExecRequest{SandboxID: "sb-x", Cmd: "x"}); return err }, ErrConflict},
		{"resume", func() error { _, err := f.ResumeSandbox(ctx, "sb-x"); return err }, nil},
		{"timeout", func() error { return f.SetSandboxTimeout(ctx, "sb-x", 9) }, nil},
	}
	for _, s := range steps {
		if err := s.call(); (s.want == nil && err != nil) || (s.want != nil && !errors.Is(err, s.want)) {
			t.Errorf("%s: %v, want %v", s.name, err, s.want)
		}
	}
	if !f.AutoPause("sb-x") || f.AutoPause("sb-x") {
		t.Error("auto-pause should succeed once")
	}
	l, _ := f.ListSandboxes(ctx)
	if len(l.AutoPausedIDs) != 1 {
		t.Errorf("auto-paused %v", l.AutoPausedIDs)
	}
	if l, _ := f.ListSandboxes(ctx); len(l.AutoPausedIDs) != 0 {
		t.Errorf("auto-paused reported twice: %v", l.AutoPausedIDs)
	}
}

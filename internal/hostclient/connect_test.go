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
	pool := NewPool()
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
	pool := NewPool()
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

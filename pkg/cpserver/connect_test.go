package cpserver

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/wrenn/wrenn/internal/testenv"
	"github.com/wrenn/wrenn/pkg/config"
	"github.com/wrenn/wrenn/pkg/id"
	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
	"github.com/wrenn/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// wireAgent is a host agent on the generated Connect handler, so the test
// below crosses the real wire: API → Pool → Connect over HTTP/1.1.
type wireAgent struct {
	hostagentv1connect.UnimplementedHostAgentServiceHandler
	mu        sync.Mutex
	sandboxes map[string]bool
}

func (a *wireAgent) CreateSandbox(_ context.Context, r *connect.Request[hostagentv1.CreateSandboxRequest]) (*connect.Response[hostagentv1.CreateSandboxResponse], error) {
	a.mu.Lock()
	a.sandboxes[r.Msg.SandboxId] = true
	a.mu.Unlock()
	return connect.NewResponse(&hostagentv1.CreateSandboxResponse{Sandbox: &hostagentv1.Sandbox{
		SandboxId: r.Msg.SandboxId, State: hostagentv1.SandboxState_SANDBOX_STATE_RUNNING, DiskMb: 4096,
		HostIp: "10.3.0.1", GuestIp: "10.3.0.2", EnvdVersion: "wire",
	}}), nil
}

func (a *wireAgent) DestroySandbox(_ context.Context, r *connect.Request[hostagentv1.DestroySandboxRequest]) (*connect.Response[hostagentv1.DestroySandboxResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.sandboxes[r.Msg.SandboxId] {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("no such sandbox"))
	}
	delete(a.sandboxes, r.Msg.SandboxId)
	return connect.NewResponse(&hostagentv1.DestroySandboxResponse{}), nil
}

func (a *wireAgent) Exec(_ context.Context, r *connect.Request[hostagentv1.ExecRequest]) (*connect.Response[hostagentv1.ExecResponse], error) {
	if r.Msg.Cmd != "echo" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("only echo here"))
	}
	return connect.NewResponse(&hostagentv1.ExecResponse{Stdout: []byte(strings.Join(r.Msg.Args, " ") + "\n"), DurationMs: 1}), nil
}

func TestRealConnectClientEndToEnd(t *testing.T) {
	t.Parallel()
	agent := &wireAgent{sandboxes: map[string]bool{}}
	_, h := hostagentv1connect.NewHostAgentServiceHandler(agent)
	var notHTTP1 atomic.Int32
	agentSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 1 {
			notHTTP1.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	defer agentSrv.Close()

	key := id.NewAPIKey()
	cfg := config.ControlPlane{Dir: t.TempDir(), Listen: "127.0.0.1:0", DatabaseURL: testenv.Postgres(t), RedisURL: testenv.Redis(t), BootstrapAPIKey: key, BootstrapAdminEmail: "a@b.c"}
	call := apiCaller(t, serve(t, WithConfig(cfg)), key)
	var host struct {
		Token string `json:"registration_token"`
	}
	call("POST", "/v1/admin/hosts", `{"name":"wire"}`, &host)
	var creds struct {
		HostID    string `json:"host_id"`
		HostToken string `json:"host_token"`
	}
	if code := call("POST", "/v1/hosts/register", `{"registration_token":"`+host.Token+`","address":"`+agentSrv.URL+`","runtime":"runc","vcpus":2}`, &creds); code != 200 {
		t.Fatalf("register: %d", code)
	}
	if code := call("POST", "/v1/hosts/heartbeat", `{"address":"`+agentSrv.URL+`","runtime":"runc","vcpus":2}`, nil, "Authorization", "Bearer "+creds.HostToken); code != 204 {
		t.Fatalf("heartbeat: %d", code)
	}
	var sb struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	if code := call("POST", "/v1/sandboxes", `{"template":"minimal"}`, &sb); code != 202 {
		t.Fatalf("create: %d", code)
	}
	waitFor := func(status string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			var got struct {
				Status      string `json:"status"`
				EnvdVersion string `json:"envd_version"`
			}
			call("GET", "/v1/sandboxes/"+sb.ID, "", &got)
			if got.Status == status {
				if status == "running" && got.EnvdVersion != "wire" {
					t.Errorf("envd_version %q, want the agent's", got.EnvdVersion)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("sandbox is %s, never %s", got.Status, status)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("running")
	var res struct {
		Stdout   string `json:"stdout"`
		ExitCode int    `json:"exit_code"`
	}
	if code := call("POST", "/v1/sandboxes/"+sb.ID+"/exec", `{"cmd":"echo","args":["hi"]}`, &res); code != 200 || res.Stdout != "hi\n" {
		t.Fatalf("exec: %d %+v", code, res)
	}
	var e struct {
		Error struct{ Code, Message string }
	}
	if code := call("POST", "/v1/sandboxes/"+sb.ID+"/exec", `{"cmd":"ls","args":[]}`, &e); code != 400 || !strings.Contains(e.Error.Message, "only echo here") {
		t.Errorf("agent InvalidArgument: %d %+v", code, e)
	}
	if code := call("DELETE", "/v1/sandboxes/"+sb.ID, "", nil); code != 202 {
		t.Fatalf("delete: %d", code)
	}
	waitFor("stopped")
	agent.mu.Lock()
	left := len(agent.sandboxes)
	agent.mu.Unlock()
	if left != 0 {
		t.Errorf("%d sandboxes left on the agent", left)
	}
	if n := notHTTP1.Load(); n != 0 {
		t.Errorf("%d agent requests were not HTTP/1.1", n)
	}
}

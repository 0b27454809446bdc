package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
	"github.com/wrenn/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// TestServiceOverConnect drives the new lifecycle RPCs through the generated
// handler and client, checking the codes the control plane branches on.
func TestServiceOverConnect(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	_, h := hostagentv1connect.NewHostAgentServiceHandler(&Service{m: r.m, runtimeName: "fake", envdVersion: EnvdVersion})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	c := hostagentv1connect.NewHostAgentServiceClient(&http.Client{Transport: tr}, srv.URL)
	ctx := context.Background()

	sid := newID()
	if _, err := c.CreateSandbox(ctx, connect.NewRequest(&hostagentv1.CreateSandboxRequest{
		SandboxId: sid, Template: "minimal", Vcpus: 1, MemoryMb: 128, TimeoutSec: 10,
	})); err != nil {
		t.Fatal(err)
	}
	code := func(err error) connect.Code { return connect.CodeOf(err) }

	p, err := c.PauseSandbox(ctx, connect.NewRequest(&hostagentv1.PauseSandboxRequest{SandboxId: sid}))
	if err != nil || p.Msg.GetSandbox().GetState() != hostagentv1.SandboxState_SANDBOX_STATE_PAUSED {
		t.Fatalf("pause: %v, %v", err, p)
	}
	tests := []struct {
		name string
		call func() error
		want connect.Code
	}{
		{"pause of paused", func() error {
			_, err := c.PauseSandbox(ctx, connect.NewRequest(&hostagentv1.PauseSandboxRequest{SandboxId: sid}))
			return err
		}, connect.CodeFailedPrecondition},
		{"exec on paused", func() error {
			_, err := c.Exec(ctx, connect.NewRequest(&hostagentv1.ExecRequest{SandboxId: sid, Cmd: "true"}))
			return err
		}, connect.CodeFailedPrecondition},
		{"resume of unknown", func() error {
			_, err := c.ResumeSandbox(ctx, connect.NewRequest(&hostagentv1.ResumeSandboxRequest{SandboxId: newID()}))
			return err
		}, connect.CodeNotFound},
		{"ping of unknown", func() error {
			_, err := c.PingSandbox(ctx, connect.NewRequest(&hostagentv1.PingSandboxRequest{SandboxId: newID()}))
			return err
		}, connect.CodeNotFound},
		{"set timeout of unknown", func() error {
			_, err := c.SetSandboxTimeout(ctx, connect.NewRequest(&hostagentv1.SetSandboxTimeoutRequest{SandboxId: newID(), TimeoutSec: 5}))
			return err
		}, connect.CodeNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := code(tt.call()); got != tt.want {
				t.Errorf("code %v, want %v", got, tt.want)
			}
		})
	}
	res, err := c.ResumeSandbox(ctx, connect.NewRequest(&hostagentv1.ResumeSandboxRequest{SandboxId: sid}))
	if err != nil || res.Msg.GetSandbox().GetState() != hostagentv1.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("resume: %v, %v", err, res)
	}
	if _, err := c.Exec(ctx, connect.NewRequest(&hostagentv1.ExecRequest{SandboxId: sid, Cmd: "true"})); err != nil {
		t.Errorf("exec after resume: %v", err)
	}
	if _, err := c.PingSandbox(ctx, connect.NewRequest(&hostagentv1.PingSandboxRequest{SandboxId: sid})); err != nil {
		t.Error(err)
	}

	// Auto-pause shows up once in the next list.
	r.run(t)
	r.tick(t, 11*time.Second)
	for i, want := range [][]string{{sid}, nil} {
		l, err := c.ListSandboxes(ctx, connect.NewRequest(&hostagentv1.ListSandboxesRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if got := l.Msg.GetAutoPausedIds(); !slices.Equal(got, want) {
			t.Errorf("list %d: auto_paused_ids %v, want %v", i, got, want)
		}
		if s := l.Msg.GetSandboxes(); len(s) != 1 || s[0].GetState() != hostagentv1.SandboxState_SANDBOX_STATE_PAUSED {
			t.Errorf("list %d: %v, want the sandbox paused", i, s)
		}
	}
	if _, err := c.DestroySandbox(ctx, connect.NewRequest(&hostagentv1.DestroySandboxRequest{SandboxId: sid})); err != nil {
		t.Fatal(err)
	}
	r.assertEmpty(t)
}

package e2e

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
	"github.com/wrenn/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// agentClient talks to the stack's agent directly, for the RPCs the REST
// API does not expose (yet).
func (s *stack) agentClient() hostagentv1connect.HostAgentServiceClient {
	tr := &http.Transport{}
	s.t.Cleanup(tr.CloseIdleConnections)
	return hostagentv1connect.NewHostAgentServiceClient(&http.Client{Transport: tr, Timeout: time.Minute}, s.agentURL)
}

func (s *stack) createRunning() string {
	s.t.Helper()
	var sb sandbox
	s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 256}, http.StatusAccepted, &sb)
	s.waitStatus(sb.ID, "running", time.Minute)
	return sb.ID
}

func (s *stack) exec(sbID, cmd string) execResult {
	s.t.Helper()
	var res execResult
	s.mustDo(http.MethodPost, "/v1/sandboxes/"+sbID+"/exec", map[string]any{"cmd": cmd}, http.StatusOK, &res)
	return res
}

// TestAgentKilledAndRestartedReadoptsSandboxes kills the agent with SIGKILL
// while one sandbox runs and one is paused, starts it again on the same
// directory with its stored credentials, and checks that both are back in
// its table and usable with their files, and that destroying them afterwards
// leaves nothing on the host.
func TestAgentKilledAndRestartedReadoptsSandboxes(t *testing.T) {
	s := startStack(t)
	before := snapshotResources(t, s.dir)
	ctx := context.Background()

	// The agent grew the template to WRENN_DEFAULT_ROOTFS_SIZE at start.
	template := filepath.Join(s.dir, "images", "minimal", "rootfs.ext4")
	if size := fileSize(t, template); size < 1<<30 {
		t.Errorf("template is %d bytes after agent start, want at least 1 GiB", size)
	}

	running, paused := s.createRunning(), s.createRunning()
	for _, id := range []string{running, paused} {
		if res := s.exec(id, "echo survived-"+id+" > /root/mark && sync"); res.ExitCode != 0 {
			t.Fatalf("write file in %s: %+v", id, res)
		}
	}
	agent := s.agentClient()
	if _, err := agent.PauseSandbox(ctx, connect.NewRequest(&hostagentv1.PauseSandboxRequest{SandboxId: paused})); err != nil {
		t.Fatalf("pause %s: %v", paused, err)
	}

	s.killAgent()
	if procs := ours(snapshotResources(t, s.dir).Processes, running, paused); len(procs) == 0 {
		t.Fatal("the sandboxes died with the agent; nothing is left to re-adopt")
	}
	s.restartAgent()

	list, err := agent.ListSandboxes(ctx, connect.NewRequest(&hostagentv1.ListSandboxesRequest{}))
	if err != nil {
		t.Fatalf("list after restart: %v", err)
	}
	got := map[string]hostagentv1.SandboxState{}
	for _, sb := range list.Msg.GetSandboxes() {
		got[sb.GetSandboxId()] = sb.GetState()
	}
	if len(got) != 2 || got[running] != hostagentv1.SandboxState_SANDBOX_STATE_RUNNING || got[paused] != hostagentv1.SandboxState_SANDBOX_STATE_PAUSED {
		t.Fatalf("restarted agent lists %v, want %s running and %s paused", got, running, paused)
	}

	if res := s.exec(running, "cat /root/mark"); res.Stdout != "survived-"+running+"\n" {
		t.Errorf("file in the running sandbox after restart: %+v", res)
	}
	if _, err := agent.ResumeSandbox(ctx, connect.NewRequest(&hostagentv1.ResumeSandboxRequest{SandboxId: paused})); err != nil {
		t.Fatalf("resume re-adopted paused sandbox: %v", err)
	}
	if res := s.exec(paused, "cat /root/mark"); res.Stdout != "survived-"+paused+"\n" {
		t.Errorf("file in the resumed sandbox after restart: %+v", res)
	}

	for _, id := range []string{running, paused} {
		s.mustDo(http.MethodDelete, "/v1/sandboxes/"+id, nil, http.StatusAccepted, nil)
		s.waitStatus(id, "stopped", time.Minute)
	}
	assertNoLeaks(t, before, settledResources(t, s.dir, running, paused), running, paused)

	// A graceful stop with no sandbox left shrinks the minimal image.
	s.agent.stop(t)
	if size := fileSize(t, template); size >= 1<<30 {
		t.Errorf("template is %d bytes after a graceful stop, want it shrunk", size)
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

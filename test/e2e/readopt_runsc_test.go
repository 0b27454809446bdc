package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/internal/runtime/oci"
	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
)

// TestReadoptAfterKillRunsc is the kill -9 re-adoption test on a gVisor
// agent: a running runsc sandbox with a file in it outlives its agent, the
// restarted agent lists it as running, exec answers and the file is there,
// and destroying it afterwards leaves nothing on the host.
func TestReadoptAfterKillRunsc(t *testing.T) {
	s := startStack(t, withRuntime(oci.RunscName))
	before := snapshotResources(t, s.dir)
	ctx := context.Background()

	var created sandbox
	s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 256}, http.StatusAccepted, &created)
	sbID := created.ID
	s.waitStatus(sbID, "running", 90*time.Second)
	if res := s.exec(sbID, "echo survived-"+sbID+" > /root/mark && sync"); res.ExitCode != 0 {
		t.Fatalf("write file: %+v", res)
	}

	s.killAgent()
	if procs := ours(snapshotResources(t, s.dir).Processes, sbID); len(procs) == 0 {
		t.Fatal("the gVisor sandbox died with the agent; nothing is left to re-adopt")
	}
	s.restartAgent()

	agent := s.agentClient()
	list, err := agent.ListSandboxes(ctx, connect.NewRequest(&hostagentv1.ListSandboxesRequest{}))
	if err != nil {
		t.Fatalf("list after restart: %v", err)
	}
	got := map[string]hostagentv1.SandboxState{}
	for _, sb := range list.Msg.GetSandboxes() {
		got[sb.GetSandboxId()] = sb.GetState()
	}
	if len(got) != 1 || got[sbID] != hostagentv1.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("restarted agent lists %v, want only %s running", got, sbID)
	}
	if res := s.exec(sbID, "cat /root/mark"); res.Stdout != "survived-"+sbID+"\n" || res.ExitCode != 0 {
		t.Errorf("file after restart: %+v, want survived-%s", res, sbID)
	}
	if res := s.exec(sbID, "echo again > /root/second && cat /root/second"); res.Stdout != "again\n" {
		t.Errorf("write after restart: %+v", res)
	}

	s.mustDo(http.MethodDelete, "/v1/sandboxes/"+sbID, nil, http.StatusAccepted, nil)
	s.waitStatus(sbID, "stopped", time.Minute)
	assertNoLeaks(t, before, settledResources(t, s.dir, sbID), sbID)
}

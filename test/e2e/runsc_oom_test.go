package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/runtime/oci"
)

// TestMemoryHogDiesEnvdLivesRunsc: in a 128 MiB gVisor sandbox a user
// command that allocates 512 MiB is killed inside (by the OOM guard, gVisor
// having no OOM killer of its own) while envd lives on and answers, and the
// sandbox keeps running.
func TestMemoryHogDiesEnvdLivesRunsc(t *testing.T) {
	s := startStack(t, withRuntime(oci.RunscName))
	before := snapshotResources(t, s.dir)
	var created sandbox
	s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 128}, http.StatusAccepted, &created)
	s.waitStatus(created.ID, "running", 90*time.Second)

	envdPID := strings.TrimSpace(s.exec(created.ID, "pgrep -x envd").Stdout)
	if envdPID == "" {
		t.Fatal("no envd in the sandbox")
	}
	hog := s.exec(created.ID, `python3 -c 'a = bytearray(512 << 20); print("allocated")'; echo "status=$?"`)
	if strings.Contains(hog.Stdout, "allocated") || !strings.Contains(hog.Stdout, "status=137") {
		t.Errorf("512 MiB in a 128 MiB sandbox: %+v, want the allocation killed (status 137)", hog)
	}
	if after := s.exec(created.ID, "pgrep -x envd"); strings.TrimSpace(after.Stdout) != envdPID {
		t.Errorf("envd is %q after the hog, was %s: it did not survive", strings.TrimSpace(after.Stdout), envdPID)
	}
	var got sandbox
	s.mustDo(http.MethodGet, "/v1/sandboxes/"+created.ID, nil, http.StatusOK, &got)
	if got.Status != "running" {
		t.Errorf("sandbox is %s after the hog, want running", got.Status)
	}

	s.mustDo(http.MethodDelete, "/v1/sandboxes/"+created.ID, nil, http.StatusAccepted, nil)
	s.waitStatus(created.ID, "stopped", 90*time.Second)
	assertNoLeaks(t, before, settledResources(t, s.dir, created.ID), created.ID)
}

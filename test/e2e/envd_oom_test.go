package e2e

import (
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMemoryHogDiesEnvdLives: in a 128 MiB runc sandbox a user command that
// allocates 512 MiB is OOM-killed inside while envd lives on and answers.
// User processes run in the delegated wrenn-user cgroup with oom_score_adj
// 100, above envd's, and on cgroup v1 under a memory limit of their own.
func TestMemoryHogDiesEnvdLives(t *testing.T) {
	s := startStack(t)
	before := snapshotResources(t, s.dir)
	var created sandbox
	s.mustDo(http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 128}, http.StatusAccepted, &created)
	s.waitStatus(created.ID, "running", 60*time.Second)
	exec := func(cmd string) execResult {
		t.Helper()
		var res execResult
		s.mustDo(http.MethodPost, "/v1/sandboxes/"+created.ID+"/exec", map[string]any{"cmd": cmd}, http.StatusOK, &res)
		return res
	}

	// The shell's own values ($$): envd sets them on the process it starts,
	// just after it starts (what that forks at once inherits envd's).
	where := exec(`sleep 0.2; cat /proc/$$/oom_score_adj; grep -E '^[0-9]+:memory:|^0::' /proc/$$/cgroup | head -n1 | cut -d: -f3; e=$(pgrep -x envd); echo $e; cat /proc/$e/oom_score_adj`)
	lines := strings.Split(strings.TrimSpace(where.Stdout), "\n")
	if len(lines) != 4 {
		t.Fatalf("identity of a user command: %+v", where)
	}
	envdPID, envdAdj := lines[2], lines[3]
	if lines[0] != "100" || lines[1] != "/wrenn-user" {
		t.Errorf("a user command runs at oom_score_adj %s in cgroup %s, want 100 in /wrenn-user", lines[0], lines[1])
	}
	if envdAdj != "0" && envdAdj != "-999" {
		t.Errorf("envd's oom_score_adj is %s, want -999 (or 0 where the agent may not lower it)", envdAdj)
	}

	// On cgroup v1 envd caps wrenn-user below the sandbox's limit (128 MiB
	// less 32 MiB for envd), so the OOM kill happens in there.
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	v1 := err != nil
	const userCg = "/sys/fs/cgroup/memory/wrenn-user/"
	if v1 {
		if got := strings.TrimSpace(exec("cat " + userCg + "memory.limit_in_bytes").Stdout); got != "100663296" {
			t.Errorf("wrenn-user's memory limit is %q, want 100663296 (96 MiB)", got)
		}
	}

	hog := exec(`sleep 0.2; python3 -c 'a = bytearray(512 << 20); print("allocated")'; echo "status=$?"`)
	if strings.Contains(hog.Stdout, "allocated") || !strings.Contains(hog.Stdout, "status=137") {
		t.Errorf("512 MiB in a 128 MiB sandbox: %+v, want the allocation killed (status 137)", hog)
	}
	if v1 {
		if got := exec("grep oom_kill " + userCg + "memory.oom_control").Stdout; !strings.Contains(got, "oom_kill 1") {
			t.Errorf("wrenn-user's OOM counters: %q, want one kill there", got)
		}
	}
	if after := exec("pgrep -x envd"); strings.TrimSpace(after.Stdout) != envdPID {
		t.Errorf("envd is %q after the hog, was %s: it did not survive", strings.TrimSpace(after.Stdout), envdPID)
	}

	s.mustDo(http.MethodDelete, "/v1/sandboxes/"+created.ID, nil, http.StatusAccepted, nil)
	s.waitStatus(created.ID, "stopped", 60*time.Second)
	assertNoLeaks(t, before, settledResources(t, s.dir, created.ID), created.ID)
}

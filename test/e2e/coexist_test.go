package e2e

import (
	"net/http"
	"slices"
	"testing"
	"time"
)

// TestTwoStacksShareAHost runs two whole platforms on this machine at once,
// each agent with its own directory and sandbox range. One agent is killed
// with SIGKILL and started again, which runs its start-up cleanup: the other
// stack's sandbox keeps its namespace, veth, rules and processes and still
// answers, and the restarted agent's own sandbox is re-adopted.
func TestTwoStacksShareAHost(t *testing.T) {
	a, b := startStack(t), startStack(t)
	beforeA, beforeB := snapshotResources(t, a.dir), snapshotResources(t, b.dir)
	sa, sb := a.createRunning(), b.createRunning()
	heldB := snapshotResources(t, b.dir)
	if len(ours(heldB.Netns, sb)) == 0 || len(heldB.Links) == len(beforeB.Links) || len(ours(heldB.Processes, sb)) == 0 {
		t.Fatalf("B's sandbox holds no namespace, veth or process: %+v", heldB)
	}

	a.killAgent()
	a.restartAgent()

	afterB := snapshotResources(t, b.dir)
	for what, pair := range map[string][2][]string{
		"namespaces": {heldB.Netns, afterB.Netns},
		"veths":      {heldB.Links, afterB.Links},
		"rules":      {heldB.Firewall, afterB.Firewall},
		"processes":  {ours(heldB.Processes, sb), ours(afterB.Processes, sb)},
	} {
		if !slices.Equal(pair[0], pair[1]) {
			t.Errorf("A's restart changed B's %s: %v, had %v", what, pair[1], pair[0])
		}
	}
	if res := b.exec(sb, "echo alive"); res.Stdout != "alive\n" {
		t.Errorf("B's sandbox after A's restart: %+v", res)
	}
	if res := a.exec(sa, "echo readopted"); res.Stdout != "readopted\n" {
		t.Errorf("A's sandbox after its agent's restart: %+v", res)
	}

	for _, p := range []struct {
		s      *stack
		id     string
		before hostResources
	}{{a, sa, beforeA}, {b, sb, beforeB}} {
		p.s.mustDo(http.MethodDelete, "/v1/sandboxes/"+p.id, nil, http.StatusAccepted, nil)
		p.s.waitStatus(p.id, "stopped", time.Minute)
		assertNoLeaks(t, p.before, settledResources(t, p.s.dir, p.id), p.id)
	}
}

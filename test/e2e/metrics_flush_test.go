package e2e

import (
	"net/http"
	"testing"
	"time"
)

// TestMetricsOutliveTheAgentsRing pauses a sandbox, kills the agent with
// SIGKILL (its in-memory rings die with it) and restarts it: the samples the
// agent flushed before the pause are still served for the paused sandbox,
// and after a destroy the stopped sandbox's history, the destroy's own last
// sample included, is served from the control plane.
func TestMetricsOutliveTheAgentsRing(t *testing.T) {
	s := startStack(t)
	before := snapshotResources(t, s.dir)
	sid := s.createRunning()
	type samples struct {
		Samples []struct {
			Time   time.Time `json:"time"`
			Memory uint64    `json:"memory_bytes"`
		} `json:"samples"`
	}
	get := func() samples {
		t.Helper()
		var m samples
		s.mustDo(http.MethodGet, "/v1/sandboxes/"+sid+"/metrics", nil, http.StatusOK, &m)
		return m
	}
	// The flush runs in the background after the pause; wait for it.
	waitMetrics := func(what string, ok func(samples) bool) samples {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			m := get()
			if ok(m) {
				return m
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: metrics %+v", what, m)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	s.mustDo(http.MethodPost, "/v1/sandboxes/"+sid+"/pause", nil, http.StatusAccepted, nil)
	s.waitStatus(sid, "paused", time.Minute)
	s.killAgent()
	s.restartAgent()
	paused := waitMetrics("paused sandbox after an agent restart", func(m samples) bool { return len(m.Samples) > 0 })
	if paused.Samples[0].Memory == 0 {
		t.Errorf("flushed sample without memory: %+v", paused.Samples[0])
	}

	s.mustDo(http.MethodPost, "/v1/sandboxes/"+sid+"/resume", nil, http.StatusAccepted, nil)
	s.waitStatus(sid, "running", time.Minute)
	s.mustDo(http.MethodDelete, "/v1/sandboxes/"+sid, nil, http.StatusAccepted, nil)
	s.waitStatus(sid, "stopped", time.Minute)
	last := paused.Samples[len(paused.Samples)-1].Time
	stopped := waitMetrics("stopped sandbox", func(m samples) bool {
		return len(m.Samples) > len(paused.Samples) && m.Samples[len(m.Samples)-1].Time.After(last)
	})
	for i := 1; i < len(stopped.Samples); i++ {
		if !stopped.Samples[i].Time.After(stopped.Samples[i-1].Time) {
			t.Errorf("stored samples out of order at %d: %+v", i, stopped.Samples)
		}
	}
	assertNoLeaks(t, before, settledResources(t, s.dir, sid), sid)
}

package api

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/id"
)

// smallHost registers an online host with the given capacity.
func (e *env) smallHost(name string, vcpus int32, memMB, diskMB int64) string {
	e.t.Helper()
	ctx := context.Background()
	reg := "wrr_" + id.Secret(8)
	exp := e.clock.Now().Add(time.Hour)
	h, err := e.q.CreateHost(ctx, db.CreateHostParams{ID: id.New(id.Host), Name: name, RegistrationTokenHash: &reg, RegistrationExpiresAt: &exp})
	must(e.t, err)
	_, err = e.q.RegisterHost(ctx, db.RegisterHostParams{
		RegistrationTokenHash: &reg, TokenHash: ptr("wrh_" + id.Secret(8)), Address: "http://127.0.0.1:1", Runtime: "fake",
		Vcpus: vcpus, MemoryMb: memMB, DiskMb: diskMB, Now: ptr(e.clock.Now()),
	})
	must(e.t, err)
	return h.ID
}

func TestAdmissionControl(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	// 2 vCPUs (3 with overcommit), 2048 MiB, 10 GiB of disk.
	e.smallHost("small", 2, 2048, 10240)
	create := func(body map[string]any) resp {
		body["template"] = "minimal"
		return e.do("POST", "/v1/sandboxes", key, body)
	}
	tests := []struct {
		name string
		body map[string]any
		want int
	}{
		{"memory beyond the host", map[string]any{"memory_mb": 4096}, 503},
		{"disk beyond the host", map[string]any{"disk_mb": 20000}, 503},
		{"CPU beyond 1.5x", map[string]any{"vcpus": 4}, 503},
		{"CPU within 1.5x", map[string]any{"vcpus": 3, "memory_mb": 512}, 202},
		{"no CPU left", map[string]any{"vcpus": 1, "memory_mb": 128}, 503},
	}
	var first Sandbox
	for _, tc := range tests {
		r := create(tc.body)
		if r.status != tc.want {
			t.Fatalf("%s: %d %s, want %d", tc.name, r.status, r.body, tc.want)
		}
		if tc.want == 503 {
			if code, msg := r.errCode(t); code != CodeUnavailable || !strings.Contains(msg, "no host has room") {
				t.Errorf("%s: %s %q", tc.name, code, msg)
			}
		} else {
			r.decode(t, &first)
		}
	}
	// A paused sandbox gives its CPU back and half its memory.
	e.waitStatus(key, first.ID, "running")
	e.do("POST", "/v1/sandboxes/"+first.ID+"/pause", key, nil)
	e.waitStatus(key, first.ID, "paused")
	if r := create(map[string]any{"vcpus": 2, "memory_mb": 1536}); r.status != 202 {
		t.Errorf("after pause, 1536 MiB next to 256 MiB counted: %d %s", r.status, r.body)
	}
	if r := create(map[string]any{"vcpus": 1, "memory_mb": 512}); r.status != 503 {
		t.Errorf("memory is a hard limit: %d %s", r.status, r.body)
	}
	// Refused creates left nothing behind.
	if n := e.countSandboxes(); n != 2 {
		t.Errorf("%d sandboxes stored, want 2", n)
	}
}

// Concurrent creates cannot both take a host's last room.
func TestAdmissionIsAtomic(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	e.smallHost("tiny", 8, 4096, 100000) // room for 8 sandboxes of 512 MiB
	var wg sync.WaitGroup
	codes := make(chan int, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes <- e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal", "memory_mb": 512}).status
		}()
	}
	wg.Wait()
	close(codes)
	got := map[int]int{}
	for c := range codes {
		got[c]++
	}
	if got[http.StatusAccepted] != 8 || got[http.StatusServiceUnavailable] != 12 {
		t.Errorf("statuses %v, want 8 accepted and 12 refused", got)
	}
}

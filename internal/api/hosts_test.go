package api

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestHostRegistration(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, admin := e.team(true)
	_, user := e.team(false)

	if r := e.do("POST", "/v1/admin/hosts", user, map[string]string{"name": "h"}); r.status != http.StatusForbidden {
		t.Fatalf("non-admin create host: %d", r.status)
	}
	r := e.do("POST", "/v1/admin/hosts", admin, map[string]string{"name": "h1"})
	if r.status != http.StatusCreated {
		t.Fatalf("create host: %d %s", r.status, r.body)
	}
	var created struct {
		Host  Host   `json:"host"`
		Token string `json:"registration_token"`
	}
	r.decode(t, &created)
	if created.Token == "" || created.Host.Status != "registering" || !strings.HasPrefix(created.Host.ID, "host-") {
		t.Fatalf("created %+v", created)
	}
	// The token is stored hashed only.
	var stored string
	must(t, e.pool.QueryRow(t.Context(), "SELECT registration_token_hash FROM hosts WHERE id = $1", created.Host.ID).Scan(&stored))
	if stored != hashSecret(created.Token) {
		t.Error("registration token not stored as its hash")
	}
	if r := e.do("POST", "/v1/admin/hosts", admin, map[string]string{"name": "h1"}); r.status != http.StatusConflict {
		t.Errorf("duplicate name: %d", r.status)
	}
	if r := e.do("POST", "/v1/admin/hosts", admin, map[string]string{}); r.status != 400 {
		t.Errorf("no name: %d", r.status)
	}

	info := map[string]any{"registration_token": created.Token, "address": "http://127.0.0.1:9090", "runtime": "runc", "vcpus": 2, "memory_mb": 4096, "disk_mb": 50000}
	for _, tc := range []struct {
		name  string
		edit  func(m map[string]any)
		field string
	}{
		{"bad address", func(m map[string]any) { m["address"] = "127.0.0.1:9090" }, "address"},
		{"no runtime", func(m map[string]any) { m["runtime"] = "" }, "runtime"},
		{"unknown field", func(m map[string]any) { m["colour"] = "red" }, "colour"},
	} {
		m := map[string]any{}
		for k, v := range info {
			m[k] = v
		}
		tc.edit(m)
		r := e.do("POST", "/v1/hosts/register", "", m)
		if _, msg := r.errCode(t); r.status != 400 || !strings.HasPrefix(msg, tc.field) {
			t.Errorf("%s: %d %q", tc.name, r.status, msg)
		}
	}

	// Two agents racing with the same token: exactly one registers.
	var wg sync.WaitGroup
	results := make([]resp, 8)
	for i := range results {
		wg.Add(1)
		go func() { defer wg.Done(); results[i] = e.do("POST", "/v1/hosts/register", "", info) }()
	}
	wg.Wait()
	var reg struct {
		HostID    string `json:"host_id"`
		HostToken string `json:"host_token"`
	}
	ok := 0
	for _, r := range results {
		switch r.status {
		case 200:
			ok++
			r.decode(t, &reg)
		case 401:
		default:
			t.Errorf("register: %d %s", r.status, r.body)
		}
	}
	if ok != 1 || reg.HostID != created.Host.ID || reg.HostToken == "" {
		t.Fatalf("%d registrations succeeded (%+v), want 1", ok, reg)
	}
	// Reuse later is refused as well.
	if r := e.do("POST", "/v1/hosts/register", "", info); r.status != 401 {
		t.Errorf("token reuse: %d", r.status)
	}

	hb := map[string]any{"address": "http://127.0.0.1:9091", "runtime": "runc", "vcpus": 4, "memory_mb": 8192, "disk_mb": 60000}
	if r := e.do("POST", "/v1/hosts/heartbeat", "", hb); r.status != 401 {
		t.Errorf("heartbeat without token: %d", r.status)
	}
	if r := e.do("POST", "/v1/hosts/heartbeat", "", hb, "Authorization", "Bearer wrh_wrong"); r.status != 401 {
		t.Errorf("heartbeat with wrong token: %d", r.status)
	}
	e.clock.Add(30 * time.Second)
	if r := e.do("POST", "/v1/hosts/heartbeat", "", hb, "Authorization", "Bearer "+reg.HostToken); r.status != http.StatusNoContent {
		t.Fatalf("heartbeat: %d %s", r.status, r.body)
	}
	var list struct{ Hosts []Host }
	e.do("GET", "/v1/admin/hosts", admin, nil).decode(t, &list)
	if len(list.Hosts) != 1 {
		t.Fatalf("hosts %+v", list)
	}
	h := list.Hosts[0]
	if h.Status != "online" || h.Address != "http://127.0.0.1:9091" || h.VCPUs != 4 || h.MemoryMB != 8192 ||
		h.LastHeartbeatAt == nil || !h.LastHeartbeatAt.Equal(e.clock.Now()) || h.RegistrationExpiresAt != nil {
		t.Errorf("host after heartbeat %+v", h)
	}
}

func TestRegistrationTokenExpires(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, admin := e.team(true)
	var created struct {
		Token string `json:"registration_token"`
	}
	e.do("POST", "/v1/admin/hosts", admin, map[string]string{"name": "late"}).decode(t, &created)
	e.clock.Add(time.Hour + time.Second)
	r := e.do("POST", "/v1/hosts/register", "", map[string]any{"registration_token": created.Token, "address": "http://127.0.0.1:1", "runtime": "runc"})
	if code, _ := r.errCode(t); r.status != 401 || code != CodeUnauthorized {
		t.Fatalf("expired token: %d %s", r.status, r.body)
	}
	var status string
	must(t, e.pool.QueryRow(t.Context(), "SELECT status FROM hosts WHERE name = 'late'").Scan(&status))
	if status != "registering" {
		t.Errorf("host became %s with an expired token", status)
	}
}

func TestHealthz(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if r := e.do("GET", "/healthz", "", nil); r.status != 200 {
		t.Fatalf("healthz: %d", r.status)
	}
	if r := e.do("GET", "/v1/nothing", "", nil); r.status != 404 {
		t.Errorf("unknown route: %d", r.status)
	}
	if r := e.do("GET", "/healthz", "", nil); r.hdr.Get("X-Request-Id") == "" {
		t.Error("no X-Request-Id")
	}
}

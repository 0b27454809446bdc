package devstack

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/wrenn/wrenn/internal/cli"
)

// adminAPI is the part of the REST API the stack itself calls.
type adminAPI struct {
	mu        sync.Mutex
	sandboxes map[string]string // id → status
	deleted   []string
	hosts     []cli.Host
	// conflictNames are host names the API refuses with 409.
	conflictNames []string
	created       []string
}

func (a *adminAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	reply := func(status int, v any) {
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v1/sandboxes":
		var list []cli.Sandbox
		for id, st := range a.sandboxes {
			list = append(list, cli.Sandbox{ID: id, Status: st})
			// Each read moves a stopping sandbox to stopped.
			if st == cli.StatusStopping {
				a.sandboxes[id] = cli.StatusStopped
			}
		}
		reply(http.StatusOK, map[string]any{"sandboxes": list})
	case r.Method == http.MethodDelete && strings.HasPrefix(r.URL.Path, "/v1/sandboxes/"):
		id := strings.TrimPrefix(r.URL.Path, "/v1/sandboxes/")
		a.deleted = append(a.deleted, id)
		if id == "sb-racing" {
			reply(http.StatusConflict, map[string]any{"error": map[string]string{"code": "conflict", "message": "already stopping"}})
			a.sandboxes[id] = cli.StatusStopped
			return
		}
		a.sandboxes[id] = cli.StatusStopping
		w.WriteHeader(http.StatusAccepted)
	case r.Method == http.MethodGet && r.URL.Path == "/v1/admin/hosts":
		reply(http.StatusOK, map[string]any{"hosts": a.hosts})
	case r.Method == http.MethodPost && r.URL.Path == "/v1/admin/hosts":
		var req struct{ Name string }
		_ = json.NewDecoder(r.Body).Decode(&req)
		if slices.Contains(a.conflictNames, req.Name) {
			reply(http.StatusConflict, map[string]any{"error": map[string]string{"code": "conflict", "message": "name taken"}})
			return
		}
		a.created = append(a.created, req.Name)
		h := cli.Host{ID: "host-" + req.Name, Name: req.Name, Status: "pending"}
		a.hosts = append(a.hosts, h)
		reply(http.StatusCreated, map[string]any{"host": h, "registration_token": "tok-" + req.Name})
	default:
		reply(http.StatusNotFound, map[string]any{"error": map[string]string{"code": "not_found", "message": r.URL.Path}})
	}
}

func newAdminClient(t *testing.T, a *adminAPI) *cli.Client {
	t.Helper()
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	c, err := cli.NewClient(srv.URL, "wrn_0123456789abcdef0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestDrainDestroysLiveSandboxesAndWaits(t *testing.T) {
	t.Parallel()
	a := &adminAPI{sandboxes: map[string]string{
		"sb-run": cli.StatusRunning, "sb-start": cli.StatusStarting, "sb-racing": cli.StatusRunning,
		"sb-old": cli.StatusStopped, "sb-bad": cli.StatusError, "sb-going": cli.StatusStopping,
	}}
	c := newAdminClient(t, a)
	var out bytes.Buffer
	if err := drainSandboxes(context.Background(), c, &console{out: &out}); err != nil {
		t.Fatalf("drain: %v", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	slices.Sort(a.deleted)
	if want := []string{"sb-racing", "sb-run", "sb-start"}; !slices.Equal(a.deleted, want) {
		t.Errorf("deleted %q, want only the live ones %q", a.deleted, want)
	}
	for id, st := range a.sandboxes {
		if !settled(st) {
			t.Errorf("%s still %s after drain", id, st)
		}
	}
	if !strings.Contains(out.String(), "destroying 3 sandbox(es)") {
		t.Errorf("console %q", out.String())
	}
}

func TestAgentRegistration(t *testing.T) {
	t.Parallel()
	say := func(string, ...any) {}
	tests := []struct {
		name        string
		hosts       []cli.Host
		conflicts   []string
		credsExist  bool
		wantToken   bool
		wantCreated string
		wantStale   bool
	}{
		{"first start registers", nil, nil, false, true, "local", false},
		{"credentials known to the control plane are reused", []cli.Host{{ID: "host-a", Name: "local", Status: "offline"}}, nil, true, false, "", false},
		{"credentials from a lost database are set aside", nil, nil, true, true, "local", true},
		{"a taken name gets a fresh one", nil, []string{"local"}, false, true, "local-", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := &adminAPI{hosts: tt.hosts, conflictNames: tt.conflicts}
			c := newAdminClient(t, a)
			credPath := filepath.Join(t.TempDir(), "agent", "credentials.json")
			if tt.credsExist {
				if err := os.MkdirAll(filepath.Dir(credPath), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(credPath, []byte(`{}`), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			hostID, token, err := agentRegistration(context.Background(), c, credPath, say)
			if err != nil {
				t.Fatal(err)
			}
			if (token != "") != tt.wantToken || (hostID != "") != tt.wantToken {
				t.Errorf("host %q token %q, want a registration: %v", hostID, token, tt.wantToken)
			}
			a.mu.Lock()
			created := slices.Clone(a.created)
			a.mu.Unlock()
			switch {
			case tt.wantCreated == "" && len(created) != 0:
				t.Errorf("created hosts %q, want none", created)
			case tt.wantCreated != "" && (len(created) != 1 || !strings.HasPrefix(created[0], tt.wantCreated)):
				t.Errorf("created hosts %q, want one named %s…", created, tt.wantCreated)
			}
			stale, _ := filepath.Glob(credPath + ".stale-*")
			if (len(stale) == 1) != tt.wantStale {
				t.Errorf("stale credential files %q, want set aside: %v", stale, tt.wantStale)
			}
			if _, err := os.Stat(credPath); tt.credsExist && !tt.wantStale && err != nil {
				t.Errorf("kept credentials were touched: %v", err)
			}
		})
	}
}

package cpserver

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/internal/testenv"
	"github.com/wrenn/wrenn/pkg/audit"
	"github.com/wrenn/wrenn/pkg/config"
	"github.com/wrenn/wrenn/pkg/cpextension"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/lifecycle"
	"github.com/wrenn/wrenn/pkg/service"
	"github.com/wrenn/wrenn/pkg/validate"
)

// poolExt is an extension that creates sandboxes for its own route through
// the sandbox service and records each in the audit log, as an enterprise
// module would.
type poolExt struct{ sc *cpextension.ServerContext }

func (x *poolExt) Name() string { return "pool-test" }
func (x *poolExt) Init(_ context.Context, sc *cpextension.ServerContext) error {
	x.sc = sc
	return nil
}
func (x *poolExt) BackgroundWorkers() []cpextension.Worker { return nil }
func (x *poolExt) RegisterRoutes(r chi.Router) {
	r.With(x.sc.RequireAPIKey).Post("/ext/warm", func(w http.ResponseWriter, r *http.Request) {
		caller, _ := x.sc.CallerFrom(r.Context())
		c := service.Caller{TeamID: caller.TeamID, Actor: "ext:pool"}
		created, err := x.sc.Sandboxes.Create(r.Context(), c, service.CreateSandbox{Template: "minimal", Metadata: map[string]string{"pool": "warm"}})
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		if err := audit.Record(r.Context(), x.sc.Queries, audit.Entry{TeamID: c.TeamID, ActorKeyID: caller.KeyID, Action: "pool.warm", ResourceType: "sandbox", ResourceID: created.ID}); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(created)
	})
}

// An extension drives the same lifecycle as the REST routes through
// ServerContext.Sandboxes, with the service's errors, and its audit entries
// show in the team's log.
func TestExtensionUsesSandboxService(t *testing.T) {
	t.Parallel()
	key := id.NewAPIKey()
	cfg := config.ControlPlane{Dir: t.TempDir(), Listen: "127.0.0.1:0", DatabaseURL: testenv.Postgres(t), RedisURL: testenv.Redis(t), BootstrapAPIKey: key, BootstrapAdminEmail: "a@b.c", CPUOvercommit: 16}
	ext := &poolExt{}
	call := apiCaller(t, serve(t, WithConfig(cfg), WithAgentDialer(hostclient.NewFake()), WithExtensions(ext)), key)
	var me struct {
		TeamID string `json:"team_id"`
	}
	if code := call("GET", "/v1/me", "", &me); code != 200 || me.TeamID == "" {
		t.Fatalf("whoami: %d %+v", code, me)
	}
	svc := ext.sc.Sandboxes
	c := service.Caller{TeamID: me.TeamID, Actor: "ext:test"}
	bg := context.Background()

	// The service's errors, before any host exists.
	var fe *validate.FieldError
	if _, err := svc.Create(bg, c, service.CreateSandbox{Template: "minimal", VCPUs: new(99)}); !errors.As(err, &fe) || fe.Field != "vcpus" {
		t.Errorf("bad vcpus: %v", err)
	}
	if _, err := svc.Create(bg, c, service.CreateSandbox{Template: "no-such"}); !errors.As(err, &fe) || fe.Field != "template" {
		t.Errorf("unknown template: %v", err)
	}
	if _, err := svc.Create(bg, c, service.CreateSandbox{Template: "minimal"}); !errors.Is(err, service.ErrNoCapacity) {
		t.Errorf("no host: %v", err)
	}
	if _, err := svc.Get(bg, c.TeamID, id.New(id.Sandbox)); !errors.Is(err, service.ErrNotFound) {
		t.Errorf("unknown sandbox: %v", err)
	}

	var host struct {
		Token string `json:"registration_token"`
	}
	call("POST", "/v1/admin/hosts", `{"name":"h1"}`, &host)
	var creds struct {
		HostToken string `json:"host_token"`
	}
	if code := call("POST", "/v1/hosts/register", `{"registration_token":"`+host.Token+`","address":"http://127.0.0.1:1","runtime":"runc","vcpus":2,"memory_mb":8192,"disk_mb":100000}`, &creds); code != 200 {
		t.Fatalf("register: %d", code)
	}

	var created service.Created
	if code := call("POST", "/ext/warm", "", &created); code != http.StatusAccepted {
		t.Fatalf("extension route: %d", code)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		sb, err := svc.Get(bg, c.TeamID, created.ID)
		if err != nil {
			t.Fatal(err)
		}
		if sb.Status == string(lifecycle.Running) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s is %s", sb.ID, sb.Status)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The REST list finds it by the metadata the extension set.
	var page service.SandboxPage
	if code := call("GET", "/v1/sandboxes?metadata=pool%3Dwarm", "", &page); code != 200 || len(page.Sandboxes) != 1 || page.Sandboxes[0].ID != created.ID {
		t.Errorf("list by metadata: %d %+v", code, page)
	}
	if err := svc.Pause(bg, c, created.ID); err != nil {
		t.Fatal(err)
	}
	// Resuming while it pauses is refused as a conflict.
	if err := svc.Resume(bg, c, created.ID); err != nil && !errors.Is(err, service.ErrConflict) {
		t.Errorf("resume while pausing: %v", err)
	}
	if err := svc.Destroy(bg, c, created.ID); err != nil {
		t.Fatal(err)
	}
	// Another team's caller cannot touch it.
	if err := svc.Destroy(bg, service.Caller{TeamID: "team-other", Actor: "x"}, created.ID); !errors.Is(err, service.ErrNotFound) {
		t.Errorf("other team's destroy: %v", err)
	}
	var log struct{ Entries []audit.Entry }
	if code := call("GET", "/v1/audit", "", &log); code != 200 {
		t.Fatalf("audit: %d", code)
	}
	found := false
	for _, e := range log.Entries {
		found = found || (e.Action == "pool.warm" && e.ResourceID == created.ID)
	}
	if !found {
		t.Errorf("the extension's audit entry is not in the team's log: %+v", log.Entries)
	}
}

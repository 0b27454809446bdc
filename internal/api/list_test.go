package api

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/pkg/service"
)

// TestCreateAttributes: metadata is kept and shown, env and internet access
// reach the host, and env is not stored by the control plane.
func TestCreateAttributes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	e.host("h1")
	var mu sync.Mutex
	got := map[string]hostclient.CreateRequest{}
	e.fake.OnCreate = func(_ context.Context, req hostclient.CreateRequest) error {
		mu.Lock()
		defer mu.Unlock()
		got[req.SandboxID] = req
		return nil
	}
	r := e.do("POST", "/v1/sandboxes", key, map[string]any{
		"template": "minimal", "metadata": map[string]string{"owner": "ana", "app": "ci"},
		"env": map[string]string{"API_TOKEN": "s3cret-value", "MODE": "test"}, "allow_internet": false,
	})
	if r.status != http.StatusAccepted {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var sb Sandbox
	r.decode(t, &sb)
	if sb.Metadata["owner"] != "ana" || sb.Metadata["app"] != "ci" || sb.AllowInternet {
		t.Errorf("created %+v", sb)
	}
	e.waitStatus(key, sb.ID, "running")
	mu.Lock()
	req := got[sb.ID]
	mu.Unlock()
	if req.AllowInternet || req.Envs["API_TOKEN"] != "s3cret-value" || req.Envs["MODE"] != "test" {
		t.Errorf("host got %+v", req)
	}
	var stored int
	must(t, e.pool.QueryRow(context.Background(), "SELECT count(*) FROM sandboxes WHERE row_to_json(sandboxes)::text LIKE '%s3cret-value%'").Scan(&stored))
	if stored != 0 {
		t.Error("the control plane stored the sandbox's env")
	}
	// The defaults: no metadata, internet allowed.
	r = e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal"})
	sb = Sandbox{}
	r.decode(t, &sb)
	if r.status != http.StatusAccepted || len(sb.Metadata) != 0 || sb.Metadata == nil || !sb.AllowInternet {
		t.Errorf("default create: %d %+v", r.status, sb)
	}
	e.waitStatus(key, sb.ID, "running")
	mu.Lock()
	req = got[sb.ID]
	mu.Unlock()
	if !req.AllowInternet {
		t.Error("internet off by default")
	}

	for _, c := range []struct {
		body  map[string]any
		field string
	}{
		{map[string]any{"template": "minimal", "metadata": map[string]string{"": "x"}}, "metadata"},
		{map[string]any{"template": "minimal", "metadata": map[string]string{"k": strings.Repeat("v", 2000)}}, "metadata.k"},
		{map[string]any{"template": "minimal", "metadata": map[string]any{"k": 1}}, "metadata"},
		{map[string]any{"template": "minimal", "env": map[string]string{"1BAD": "x"}}, "env"},
		{map[string]any{"template": "minimal", "env": map[string]string{"A": "x\x00y"}}, "env.A"},
		{map[string]any{"template": "minimal", "allow_internet": "yes"}, "allow_internet"},
	} {
		r := e.do("POST", "/v1/sandboxes", key, c.body)
		code, msg := r.errCode(t)
		if r.status != http.StatusBadRequest || code != CodeInvalidArgument || !strings.HasPrefix(msg, c.field) {
			t.Errorf("%v: %d %s %q, want 400 naming %s", c.body, r.status, code, msg, c.field)
		}
	}
	var n int
	must(t, e.pool.QueryRow(context.Background(), "SELECT count(*) FROM sandboxes").Scan(&n))
	if n != 2 {
		t.Errorf("%d sandboxes after refused creates, want 2", n)
	}
}

// TestListFiltersAndPages: status and metadata filters, and pages that
// together hold every sandbox once, newest first, while other teams'
// sandboxes never show.
func TestListFiltersAndPages(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, key := e.team(false)
	_, other := e.team(false)
	e.host("h1")
	create := func(key string, meta map[string]string) string {
		r := e.do("POST", "/v1/sandboxes", key, map[string]any{"template": "minimal", "metadata": meta})
		if r.status != http.StatusAccepted {
			t.Fatalf("create: %d %s", r.status, r.body)
		}
		var sb Sandbox
		r.decode(t, &sb)
		e.waitStatus(key, sb.ID, "running")
		return sb.ID
	}
	var ids []string // oldest first
	for i := range 7 {
		app := "web"
		if i%2 == 1 {
			app = "db"
		}
		ids = append(ids, create(key, map[string]string{"app": app, "env": "prod"}))
	}
	create(other, map[string]string{"app": "web", "env": "prod"})
	// Pause the newest two.
	for _, id := range ids[5:] {
		if r := e.do("POST", "/v1/sandboxes/"+id+"/pause", key, nil); r.status != http.StatusAccepted {
			t.Fatalf("pause: %d", r.status)
		}
		e.waitStatus(key, id, "paused")
	}
	list := func(q url.Values) (service.SandboxPage, resp) {
		r := e.do("GET", "/v1/sandboxes?"+q.Encode(), key, nil)
		var p service.SandboxPage
		if r.status == http.StatusOK {
			r.decode(t, &p)
		}
		return p, r
	}
	idsOf := func(p service.SandboxPage) string {
		var s []string
		for _, sb := range p.Sandboxes {
			s = append(s, sb.ID)
		}
		return strings.Join(s, ",")
	}
	want := func(idx ...int) string {
		var s []string
		for _, i := range idx {
			s = append(s, ids[i])
		}
		return strings.Join(s, ",")
	}

	all, _ := list(url.Values{})
	if idsOf(all) != want(6, 5, 4, 3, 2, 1, 0) || all.NextCursor != "" {
		t.Errorf("all: %s next %q", idsOf(all), all.NextCursor)
	}
	web, _ := list(url.Values{"metadata": {"app=web&env=prod"}})
	if idsOf(web) != want(6, 4, 2, 0) {
		t.Errorf("app=web: %s", idsOf(web))
	}
	paused, _ := list(url.Values{"status": {"paused"}})
	if idsOf(paused) != want(6, 5) {
		t.Errorf("paused: %s", idsOf(paused))
	}
	both, _ := list(url.Values{"status": {"running,paused"}, "metadata": {"app=db"}})
	if idsOf(both) != want(5, 3, 1) {
		t.Errorf("running or paused with app=db: %s", idsOf(both))
	}
	none, _ := list(url.Values{"metadata": {"app=web&env=staging"}})
	if len(none.Sandboxes) != 0 || none.Sandboxes == nil {
		t.Errorf("no match: %+v", none)
	}

	// Pages of 3: every sandbox once, in order; the last page has no cursor.
	var paged []string
	q := url.Values{"limit": {"3"}}
	for range 5 {
		p, r := list(q)
		if r.status != http.StatusOK {
			t.Fatalf("page: %d %s", r.status, r.body)
		}
		paged = append(paged, idsOf(p))
		if p.NextCursor == "" {
			break
		}
		q.Set("cursor", p.NextCursor)
	}
	if strings.Join(paged, ",") != want(6, 5, 4, 3, 2, 1, 0) {
		t.Errorf("pages %v", paged)
	}
	// A cursor of one filter keeps paging within that filter.
	p, _ := list(url.Values{"metadata": {"app=web"}, "limit": {"2"}})
	p2, _ := list(url.Values{"metadata": {"app=web"}, "limit": {"2"}, "cursor": {p.NextCursor}})
	if idsOf(p)+","+idsOf(p2) != want(6, 4, 2, 0) {
		t.Errorf("filtered pages %s + %s", idsOf(p), idsOf(p2))
	}

	for _, c := range []struct {
		q     url.Values
		field string
	}{
		{url.Values{"status": {"sleeping"}}, "status"},
		{url.Values{"limit": {"0"}}, "limit"},
		{url.Values{"limit": {"1001"}}, "limit"},
		{url.Values{"limit": {"ten"}}, "limit"},
		{url.Values{"cursor": {"not-a-cursor!"}}, "cursor"},
		{url.Values{"metadata": {"a=1&a=2"}}, "metadata"},
		{url.Values{"metadata": {"%zz"}}, "metadata"},
	} {
		_, r := list(c.q)
		code, msg := r.errCode(t)
		if r.status != http.StatusBadRequest || code != CodeInvalidArgument || !strings.HasPrefix(msg, c.field) {
			t.Errorf("%v: %d %s %q, want 400 naming %s", c.q, r.status, code, msg, c.field)
		}
	}
}

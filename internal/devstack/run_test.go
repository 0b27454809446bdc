package devstack

// These tests run the real Run: real Postgres and Redis from the Debian
// packages, and stand-ins for wrenn-cp, wrenn-agent and the image script.
// The stand-ins are this test binary re-executed (see TestMain): they load
// their configuration through pkg/config exactly as the real daemons do,
// connect to the Postgres and Redis the stack started, register and
// heartbeat like the agent, and record what happened to them in
// $WRENN_DIR/events.log so the tests can check the order of shutdown.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn/wrenn/internal/localsvc"
	"github.com/wrenn/wrenn/pkg/config"
	"github.com/wrenn/wrenn/pkg/id"
)

const fakeEnv = "WRENN_DEVSTACK_TEST_FAKE"

func TestMain(m *testing.M) {
	if role, ok := os.LookupEnv(fakeEnv); ok {
		if err := runFake(role); err != nil {
			fmt.Fprintf(os.Stderr, "fake %s: %v\n", role, err)
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func appendEvent(dir, event string) {
	f, err := os.OpenFile(filepath.Join(dir, "events.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, event)
}

func runFake(role string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	switch role {
	case "cp":
		return fakeCP(ctx)
	case "agent":
		return fakeAgent(ctx)
	}
	return fmt.Errorf("unknown role %q", role)
}

// fakeState is the control plane's "database", kept in a file so it survives
// restarts as the real one does in Postgres.
type fakeState struct {
	Hosts     []fakeHost     `json:"hosts"`
	Sandboxes []fakeSandbox  `json:"sandboxes"`
	Tokens    map[string]int `json:"tokens"` // registration token → host index
}

type fakeHost struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Status string `json:"status"`
}

type fakeSandbox struct {
	ID       string    `json:"id"`
	Template string    `json:"template"`
	Status   string    `json:"status"`
	StopAt   time.Time `json:"stop_at"`
}

func fakeCP(ctx context.Context) error {
	cfg, err := config.LoadControlPlane(config.Env())
	if err != nil {
		return err
	}
	// Prove the stack handed over working Postgres and Redis URLs.
	conn, err := pgx.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	opt, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return err
	}
	rc := redis.NewClient(opt)
	defer rc.Close()
	if err := rc.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	if cfg.BootstrapAPIKey == "" {
		return errors.New("no bootstrap API key")
	}
	path := filepath.Join(cfg.Dir, "fakecp.json")
	var mu sync.Mutex
	st := fakeState{Tokens: map[string]int{}}
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &st); err != nil {
			return err
		}
	}
	save := func() {
		b, _ := json.Marshal(st)
		_ = os.WriteFile(path, b, 0o600)
	}
	reply := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	fail := func(w http.ResponseWriter, status int, msg string) {
		reply(w, status, map[string]any{"error": map[string]string{"code": "x", "message": msg}})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	authed := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-API-Key") != cfg.BootstrapAPIKey {
				fail(w, http.StatusUnauthorized, "bad key")
				return
			}
			mu.Lock()
			defer mu.Unlock()
			h(w, r)
			save()
		}
	}
	mux.HandleFunc("POST /v1/admin/hosts", authed(func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Name string }
		_ = json.NewDecoder(r.Body).Decode(&req)
		for _, h := range st.Hosts {
			if h.Name == req.Name {
				fail(w, http.StatusConflict, "host name taken")
				return
			}
		}
		h := fakeHost{ID: id.New(id.Host), Name: req.Name, Status: "pending"}
		st.Hosts = append(st.Hosts, h)
		tok := id.Secret(8)
		st.Tokens[tok] = len(st.Hosts) - 1
		appendEvent(cfg.Dir, "host created "+h.Name)
		reply(w, http.StatusCreated, map[string]any{"host": h, "registration_token": tok})
	}))
	mux.HandleFunc("GET /v1/admin/hosts", authed(func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, map[string]any{"hosts": st.Hosts})
	}))
	mux.HandleFunc("POST /v1/sandboxes", authed(func(w http.ResponseWriter, r *http.Request) {
		sb := fakeSandbox{ID: id.New(id.Sandbox), Template: "minimal", Status: "running"}
		st.Sandboxes = append(st.Sandboxes, sb)
		reply(w, http.StatusAccepted, sb)
	}))
	mux.HandleFunc("GET /v1/sandboxes", authed(func(w http.ResponseWriter, r *http.Request) {
		for i := range st.Sandboxes {
			if sb := &st.Sandboxes[i]; sb.Status == "stopping" && time.Now().After(sb.StopAt) {
				sb.Status = "stopped"
				appendEvent(cfg.Dir, "sandbox stopped")
			}
		}
		reply(w, http.StatusOK, map[string]any{"sandboxes": st.Sandboxes})
	}))
	mux.HandleFunc("DELETE /v1/sandboxes/{id}", authed(func(w http.ResponseWriter, r *http.Request) {
		for i := range st.Sandboxes {
			if sb := &st.Sandboxes[i]; sb.ID == r.PathValue("id") {
				sb.Status, sb.StopAt = "stopping", time.Now().Add(300*time.Millisecond)
				appendEvent(cfg.Dir, "sandbox deleted")
				w.WriteHeader(http.StatusAccepted)
				return
			}
		}
		fail(w, http.StatusNotFound, "no such sandbox")
	}))
	// The agent side, simplified: register with a token or heartbeat with
	// the stored host id.
	mux.HandleFunc("POST /fake/register", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		var req struct{ Token, HostID string }
		_ = json.NewDecoder(r.Body).Decode(&req)
		i, ok := st.Tokens[req.Token]
		if req.Token == "" {
			ok = false
			for j, h := range st.Hosts {
				if h.ID == req.HostID {
					i, ok = j, true
				}
			}
		}
		if !ok {
			fail(w, http.StatusUnauthorized, "unknown agent")
			return
		}
		delete(st.Tokens, req.Token)
		st.Hosts[i].Status = "online"
		save()
		reply(w, http.StatusOK, st.Hosts[i])
	})
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	appendEvent(cfg.Dir, "cp started")
	fmt.Fprintln(os.Stderr, "fake control plane listening on", cfg.Listen)
	<-ctx.Done()
	_ = srv.Close()
	appendEvent(cfg.Dir, "cp stopped")
	return nil
}

func fakeAgent(ctx context.Context) error {
	cfg, err := config.LoadAgent(config.Env())
	if err != nil {
		return err
	}
	if !cfg.DestroyOnExit {
		return errors.New("WRENN_AGENT_SHUTDOWN is not destroy: sandboxes would outlive the stack")
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, "images", "minimal", "rootfs.ext4")); err != nil {
		return fmt.Errorf("image not built before the agent started: %w", err)
	}
	credPath := filepath.Join(cfg.Dir, "agent", "credentials.json")
	var creds struct{ HostID string }
	if cfg.RegistrationToken == "" {
		b, err := os.ReadFile(credPath)
		if err != nil {
			return fmt.Errorf("no token and no credentials: %w", err)
		}
		if err := json.Unmarshal(b, &creds); err != nil {
			return err
		}
		appendEvent(cfg.Dir, "agent reused credentials")
	} else {
		appendEvent(cfg.Dir, "agent registered with a token")
	}
	body, _ := json.Marshal(map[string]string{"token": cfg.RegistrationToken, "hostid": creds.HostID})
	resp, err := http.Post(cfg.ControlPlaneURL+"/fake/register", "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	var h fakeHost
	err = json.NewDecoder(resp.Body).Decode(&h)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("register: %d %v", resp.StatusCode, err)
	}
	if err := os.MkdirAll(filepath.Dir(credPath), 0o700); err != nil {
		return err
	}
	b, _ := json.Marshal(map[string]string{"hostid": h.ID})
	if err := os.WriteFile(credPath, b, 0o600); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	fmt.Fprintln(os.Stderr, "fake agent listening on", cfg.Listen)
	if _, crash := os.LookupEnv("WRENN_DEVSTACK_TEST_CRASH"); crash {
		select {
		case <-time.After(1500 * time.Millisecond):
			fmt.Fprintln(os.Stderr, "fake agent: crashing on purpose")
			os.Exit(7)
		case <-ctx.Done():
		}
	}
	<-ctx.Done()
	_ = srv.Close()
	appendEvent(cfg.Dir, "agent stopped")
	return nil
}

// syncBuffer is a bytes.Buffer safe for a writer and a polling reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fakeRepo struct {
	binDir, script string
}

// newFakeRepo writes a bin/ of stand-ins and a scripts/build-image.sh that
// writes a placeholder image, in the layout Run expects of a checkout.
func newFakeRepo(t *testing.T) fakeRepo {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	repo := t.TempDir()
	r := fakeRepo{binDir: filepath.Join(repo, "bin"), script: filepath.Join(repo, "scripts", "build-image.sh")}
	for _, d := range []string{r.binDir, filepath.Dir(r.script)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		filepath.Join(r.binDir, "wrenn-cp"):    fmt.Sprintf("#!/bin/sh\n%s=cp exec '%s'\n", fakeEnv, self),
		filepath.Join(r.binDir, "wrenn-agent"): fmt.Sprintf("#!/bin/sh\n%s=agent exec '%s'\n", fakeEnv, self),
		filepath.Join(r.binDir, "envd"):        "envd",
		filepath.Join(r.binDir, "wrenn-init"):  "init",
		r.script: "#!/bin/sh\nset -e\n[ \"$#\" -eq 3 ] && [ -f \"$2\" ] && [ -f \"$3\" ] && [ -n \"$WRENN_CACHE_DIR\" ]\n" +
			"mkdir -p \"$1\"\nif [ -f \"$1/rootfs.ext4\" ]; then echo up to date; exit 0; fi\n" +
			"echo building; cat \"$2\" \"$3\" > \"$1/rootfs.ext4\"\n",
	}
	for p, content := range files {
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

type runResult struct {
	err            error
	stdout, stderr *syncBuffer
	done           chan struct{}
	cancel         context.CancelFunc
}

func startRun(t *testing.T, cfg config.Dev, repo fakeRepo, extraEnv ...string) *runResult {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &runResult{stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{}), cancel: cancel}
	env := append(os.Environ(), extraEnv...)
	go func() {
		defer close(r.done)
		r.err = Run(ctx, Options{Config: cfg, BinDir: repo.binDir, ImageScript: repo.script, BaseEnv: env, Stdout: r.stdout, Stderr: r.stderr})
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// waitReady returns once the stack printed its export lines, or fails.
func (r *runResult) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.After(90 * time.Second)
	for !strings.Contains(r.stdout.String(), "# ready in") {
		select {
		case <-r.done:
			t.Fatalf("Run ended before ready: %v\nstderr:\n%s", r.err, r.stderr.String())
		case <-deadline:
			t.Fatalf("not ready within 90s\nstderr:\n%s", r.stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (r *runResult) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		return r.err
	case <-time.After(60 * time.Second):
		t.Fatalf("Run did not return within 60s of the stop\nstderr:\n%s", r.stderr.String())
	}
	return nil
}

func requireStackPrereqs(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping: starts Postgres and Redis (-short)")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: wrenn dev needs root")
	}
	if _, err := localsvc.PostgresBinDir(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	if _, err := localsvc.RedisBinary(); err != nil {
		t.Skipf("skipping: %v", err)
	}
}

func testConfig(t *testing.T) config.Dev {
	t.Helper()
	ports := make([]int, 4)
	for i := range ports {
		p, err := localsvc.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = p
	}
	return config.Dev{
		Dir:          t.TempDir(),
		APIListen:    fmt.Sprintf("127.0.0.1:%d", ports[0]),
		AgentListen:  fmt.Sprintf("127.0.0.1:%d", ports[1]),
		PostgresPort: ports[2],
		RedisPort:    ports[3],
		LogLevel:     "debug",
	}
}

func readEvents(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "events.log"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func assertPortsClosed(t *testing.T, cfg config.Dev) {
	t.Helper()
	for _, addr := range []string{cfg.APIListen, cfg.AgentListen, fmt.Sprintf("127.0.0.1:%d", cfg.PostgresPort), fmt.Sprintf("127.0.0.1:%d", cfg.RedisPort)} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("something still listens on %s after the stack stopped", addr)
		}
	}
}

func TestRunStartsStopsAndRestarts(t *testing.T) {
	requireStackPrereqs(t)
	cfg := testConfig(t)
	repo := newFakeRepo(t)

	first := startRun(t, cfg, repo)
	first.waitReady(t)
	lines := strings.Split(first.stdout.String(), "\n")
	creds, _, err := LoadOrCreateCredentials(filepath.Join(cfg.Dir, "dev", "credentials.json"))
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Split(ExportLines(cfg.APIURL(), creds.APIKey), "\n"); len(lines) < 3 || lines[0] != want[0] || lines[1] != want[1] {
		t.Fatalf("stdout %q, want the export lines %q first", first.stdout.String(), want)
	}
	for _, prefix := range []string{"[cp] ", "[agent] ", "[image] building"} {
		if !strings.Contains(first.stderr.String(), prefix) {
			t.Errorf("stderr lacks %q lines:\n%s", prefix, first.stderr.String())
		}
	}

	// A second stack on the same directory is refused while this one runs.
	second := startRun(t, cfg, repo)
	<-second.done
	if !errors.Is(second.err, ErrAlreadyRunning) {
		t.Fatalf("concurrent Run = %v, want ErrAlreadyRunning", second.err)
	}

	// A running sandbox is destroyed on stop, before the agent stops.
	c, err := newTestClient(cfg, creds.APIKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.post("/v1/sandboxes"); err != nil {
		t.Fatal(err)
	}
	if err := first.stop(t); err != nil {
		t.Fatalf("Run after stop = %v\nstderr:\n%s", err, first.stderr.String())
	}
	want := []string{"cp started", "host created local", "agent registered with a token", "sandbox deleted", "sandbox stopped", "agent stopped", "cp stopped"}
	if got := readEvents(t, cfg.Dir); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events %q, want %q", got, want)
	}
	assertPortsClosed(t, cfg)

	// The restart reuses everything: same lines, no new host, no token,
	// image up to date, and quick.
	t0 := time.Now()
	again := startRun(t, cfg, repo)
	again.waitReady(t)
	if d := time.Since(t0); d > 15*time.Second {
		t.Errorf("second start took %s, want under 15s", d)
	}
	if a, b := strings.Join(lines[:2], "\n"), strings.Join(strings.Split(again.stdout.String(), "\n")[:2], "\n"); a != b {
		t.Errorf("export lines changed across starts:\n%s\n%s", a, b)
	}
	if !strings.Contains(again.stderr.String(), "[image] up to date") {
		t.Errorf("image rebuilt on restart:\n%s", again.stderr.String())
	}
	if err := again.stop(t); err != nil {
		t.Fatalf("second Run after stop = %v", err)
	}
	want = append(want, "cp started", "agent reused credentials", "agent stopped", "cp stopped")
	if got := readEvents(t, cfg.Dir); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events after restart %q, want %q", got, want)
	}
	assertPortsClosed(t, cfg)
	if fi, err := os.Stat(filepath.Join(cfg.Dir, "dev", "credentials.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("credentials file: %v %v", fi, err)
	}
}

func TestRunStopsEverythingWhenAChildDies(t *testing.T) {
	requireStackPrereqs(t)
	cfg := testConfig(t)
	repo := newFakeRepo(t)
	r := startRun(t, cfg, repo, "WRENN_DEVSTACK_TEST_CRASH=1")
	r.waitReady(t)
	select {
	case <-r.done:
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not notice the agent's death within 60s")
	}
	var ce *ChildExitedError
	if !errors.As(r.err, &ce) || ce.Name != "host agent" || !strings.Contains(ce.Tail, "crashing on purpose") {
		t.Fatalf("Run = %v, want the host agent named with its last output", r.err)
	}
	if got := readEvents(t, cfg.Dir); got[len(got)-1] != "cp stopped" {
		t.Errorf("events %q: the control plane was not stopped", got)
	}
	assertPortsClosed(t, cfg)
}

func TestRunRefusesWithoutBinaries(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("skipping: the root check comes first")
	}
	cfg := testConfig(t)
	err := Run(context.Background(), Options{Config: cfg, BinDir: t.TempDir(), Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}})
	if err == nil || !strings.Contains(err.Error(), "make build") {
		t.Errorf("Run = %v, want a hint to run make build", err)
	}
}

type testClient struct {
	base, key string
	hc        *http.Client
}

func newTestClient(cfg config.Dev, key string) (*testClient, error) {
	return &testClient{base: cfg.APIURL(), key: key, hc: &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}}, nil
}

func (c *testClient) post(path string) (int, error) {
	req, err := http.NewRequest(http.MethodPost, c.base+path, strings.NewReader(`{"template":"minimal"}`))
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-API-Key", c.key)
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return resp.StatusCode, fmt.Errorf("POST %s: %s", path, resp.Status)
	}
	return resp.StatusCode, nil
}

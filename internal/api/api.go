// Package api is the control plane's REST API: routing, authentication,
// input validation, the mapping of errors to {"error":{"code","message"}},
// and the background work that sandbox operations start after answering 202.
package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/internal/pki"
	"github.com/wrenn/wrenn/pkg/auth"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/scheduler"
)

// Deps are what the API needs, built by cpserver (or a test).
type Deps struct {
	DB     *pgxpool.Pool
	Agents hostclient.Dialer
	Events events.Publisher
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Health checks the API's dependencies for /healthz; nil checks the DB.
	Health func(ctx context.Context) error
	// AgentTimeout bounds one background agent operation; 0 means 2 minutes.
	AgentTimeout time.Duration
	// Redis serves GET /v1/events (blocking reads of wrenn:events); nil
	// makes that route 503. Give it a client of its own: every open stream
	// holds one of its connections.
	Redis redis.UniversalClient
	// StreamKeepalive is how often an idle event stream gets a comment;
	// 0 means 15 s.
	StreamKeepalive time.Duration
	// Placement is the admission policy; nil means
	// scheduler.DefaultPolicy.
	Placement *scheduler.Policy
	// DefaultDiskMB is what a sandbox created with disk_mb 0 (the host's
	// default size) counts against its host's disk until the host reports
	// the real size; 0 means 1024.
	DefaultDiskMB int64
	// PublicURL is how users reach the API; session cookies are Secure
	// when it is https.
	PublicURL string
	// SessionTTL is how long an unused cookie session lives (each use
	// slides it); 0 means 14 days.
	SessionTTL time.Duration
	// PasswordParams are argon2id's costs for new password hashes; nil
	// means auth.DefaultParams. Tests lower them.
	PasswordParams *auth.Params
	// Domain is WRENN_DOMAIN: hosts {port}-{sandbox_id}.{Domain} are port
	// traffic. Empty: only the E2b-Sandbox-Id/-Port headers route.
	Domain string
	// CA signs agents' server certificates at registration and refresh;
	// nil refuses registrations that send a CSR.
	CA *pki.CA
	// ProxyTransport carries port traffic to agents, apart from the RPC
	// pool; nil means hostclient.NewProxyTransport(nil).
	ProxyTransport http.RoundTripper
	// MaxUploadBytes bounds one file upload (PUT .../files); larger bodies
	// are 413. 0 means DefaultMaxUploadBytes.
	MaxUploadBytes int64
	// Metrics are served at /metrics; nil means a fresh NewMetrics.
	Metrics *Metrics
	// MetricsToken, when set, is the bearer token /metrics requires.
	MetricsToken string
}

// API serves the REST API and owns the background work it starts.
type API struct {
	d      Deps
	q      *db.Queries
	log    *slog.Logger
	policy scheduler.Policy

	// Background work runs under base, detached from requests; Wait waits
	// for it and, past its deadline, cancels base.
	base   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	// auditWG counts audit log inserts still running after their request.
	auditWG sync.WaitGroup
	closed  bool

	// streams ends when CloseStreams is called; event streams stop then.
	streams       context.Context
	streamsCancel context.CancelFunc

	// Port proxy (proxy.go): cached agent routes and the reverse proxy.
	portRoutes portRoutes
	portRP     *httputil.ReverseProxy

	metrics *Metrics
}

// New returns an API over d.
func New(d Deps) *API {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.AgentTimeout == 0 {
		d.AgentTimeout = 2 * time.Minute
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Health == nil {
		d.Health = func(ctx context.Context) error { return d.DB.Ping(ctx) }
	}
	policy := scheduler.DefaultPolicy
	if d.Placement != nil {
		policy = *d.Placement
	}
	if d.DefaultDiskMB == 0 {
		d.DefaultDiskMB = 1024
	}
	if d.StreamKeepalive == 0 {
		d.StreamKeepalive = 15 * time.Second
	}
	base, cancel := context.WithCancel(context.Background())
	streams, streamsCancel := context.WithCancel(context.Background())
	if d.ProxyTransport == nil {
		d.ProxyTransport = hostclient.NewProxyTransport(nil)
	}
	if d.Metrics == nil {
		d.Metrics = NewMetrics()
	}
	a := &API{d: d, q: db.New(d.DB), log: d.Logger, policy: policy, base: base, cancel: cancel, streams: streams, streamsCancel: streamsCancel, metrics: d.Metrics}
	a.portRP = a.newPortReverseProxy(d.ProxyTransport)
	return a
}

// Routes mounts every route of the API on r, with request ids, access logs
// and panic recovery.
func (a *API) Routes(r chi.Router) {
	// Outermost, so a panic's 500 is counted too.
	r.Use(a.instrument)
	r.Use(a.requestContext)
	// Port traffic is routed by host or headers, before any API route.
	r.Use(a.portProxy)
	r.Get("/healthz", a.healthz)
	r.Get("/openapi.yaml", serveOpenAPI)
	r.Method(http.MethodGet, "/metrics", a.metricsAuth(a.metrics.Handler()))
	r.Route("/v1", func(r chi.Router) {
		r.Post("/hosts/register", a.registerHost)
		r.Post("/hosts/heartbeat", a.heartbeat)
		r.Post("/hosts/refresh", a.refreshHost)
		r.Post("/hosts/sandbox-events", a.hostSandboxEvent)
		r.Post("/hosts/sandbox-metrics", a.hostSandboxMetrics)
		a.publicIdentityRoutes(r)
		r.Group(func(r chi.Router) {
			r.Use(a.auditTrail)
			r.Use(a.RequireAPIKey)
			a.identityRoutes(r)
			r.Post("/sandboxes", a.createSandbox)
			r.Get("/sandboxes", a.listSandboxes)
			r.Get("/events", a.eventStream)
			r.Get("/sandboxes/{id}", a.getSandbox)
			r.Delete("/sandboxes/{id}", a.deleteSandbox)
			r.Post("/sandboxes/{id}/exec", a.execSandbox)
			r.Post("/sandboxes/{id}/pause", a.pauseSandbox)
			r.Post("/sandboxes/{id}/resume", a.resumeSandbox)
			r.Post("/sandboxes/{id}/ping", a.pingSandbox)
			r.Post("/sandboxes/{id}/timeout", a.setTimeout)
			a.interactiveRoutes(r)
			r.Group(func(r chi.Router) {
				r.Use(requireAdmin)
				r.Post("/admin/hosts", a.createHost)
				r.Get("/admin/hosts", a.listHosts)
				r.Delete("/admin/hosts/{id}", a.deleteHost)
				a.identityAdminRoutes(r)
			})
		})
	})
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		a.fail(w, r, &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "no such route: " + r.Method + " " + r.URL.Path})
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		a.fail(w, r, &Error{Status: http.StatusMethodNotAllowed, Code: CodeInvalidArgument, Message: "method " + r.Method + " is not allowed on " + r.URL.Path})
	})
}

// Handler returns a router serving just the API.
func (a *API) Handler() http.Handler {
	r := chi.NewRouter()
	a.Routes(r)
	return r
}

// errShuttingDown refuses new background work once Wait has begun.
var errShuttingDown = &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "the control plane is shutting down; retry against another replica or in a moment"}

// goBackground runs fn detached from the request, with its own deadline.
// It refuses once shutdown began, so Wait cannot miss work.
func (a *API) goBackground(fn func(ctx context.Context)) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return errShuttingDown
	}
	a.wg.Add(1)
	start := time.Now()
	go func() {
		defer a.wg.Done()
		ctx, cancel := context.WithTimeout(withOpTimer(a.base, start), a.d.AgentTimeout)
		defer cancel()
		fn(ctx)
	}()
	return nil
}

// Wait stops accepting background work and waits for what runs. When ctx
// ends first, the remaining work is cancelled (its agent calls return) and
// Wait still waits for it to record its outcome, then returns ctx's error.
func (a *API) Wait(ctx context.Context) error {
	a.CloseStreams()
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	done := make(chan struct{})
	go func() { a.wg.Wait(); a.auditWG.Wait(); close(done) }()
	select {
	case <-done:
		a.cancel()
		return nil
	case <-ctx.Done():
		a.cancel()
		<-done
		return ctx.Err()
	}
}

func (a *API) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	if err := a.d.Health(ctx); err != nil {
		a.fail(w, r, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "a dependency of the control plane is not answering", Cause: err})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// hashSecret is how API keys and host tokens are stored: hex SHA-256. The
// secrets are 128+ random bits, so no salt or slow hash is needed, and
// looking up by hash leaks nothing through timing.
func hashSecret(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// HashSecret exposes hashSecret to the bootstrap, which stores the first key.
func HashSecret(s string) string { return hashSecret(s) }

func isNoRows(err error) bool { return errors.Is(err, errNoRows) }

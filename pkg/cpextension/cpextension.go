// Package cpextension is how a module adds to the control plane without
// forking it: an Extension registers routes and background workers and gets
// the server's initialised dependencies through ServerContext. cpserver.Run
// calls Init, then RegisterRoutes, then starts BackgroundWorkers, and stops
// the workers (by cancelling their context) before closing the dependencies.
package cpextension

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/wrenn/wrenn/pkg/config"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/service"
)

// Extension adds routes and background work to the control plane.
type Extension interface {
	// Name identifies the extension in logs and errors.
	Name() string
	// Init receives the server's dependencies before routes are mounted.
	// An error stops the server from starting.
	Init(ctx context.Context, sc *ServerContext) error
	// RegisterRoutes mounts the extension's routes on the root router. The
	// extension authenticates them itself, typically with
	// ServerContext.RequireAPIKey.
	RegisterRoutes(r chi.Router)
	// BackgroundWorkers returns work to run for the server's lifetime.
	BackgroundWorkers() []Worker
}

// Worker is one long-running background task. Run returns when ctx ends; an
// error before that is logged and does not stop the server.
type Worker struct {
	Name string
	Run  func(ctx context.Context) error
}

// Caller is who an authenticated API request acts for.
type Caller struct {
	KeyID  string
	TeamID string
	UserID string
	Admin  bool
}

// ServerContext holds the control plane's initialised dependencies. They are
// owned by the server: extensions use them and never close them.
type ServerContext struct {
	Config  config.ControlPlane
	Version string
	Logger  *slog.Logger
	DB      *pgxpool.Pool
	Queries *db.Queries
	Redis   redis.UniversalClient
	Events  events.Publisher
	// Metrics is the registry served at /metrics; extensions register
	// their own series on it.
	Metrics *prometheus.Registry
	// RequireAPIKey authenticates X-API-Key exactly as the built-in routes
	// do; CallerFrom then returns the caller.
	RequireAPIKey func(http.Handler) http.Handler
	// CallerFrom returns the caller of a request authenticated by
	// RequireAPIKey.
	CallerFrom func(ctx context.Context) (Caller, bool)
	// Sandboxes is the sandbox lifecycle behind the REST routes: the same
	// validation, placement, compare-and-set transitions and events. Record
	// what an extension does on its users' behalf with pkg/audit.
	Sandboxes service.Sandboxes
}

// SandboxEventHook is an optional interface of an Extension: OnSandboxEvent
// is called by the event consumer for every lifecycle event after the
// built-in fallback writer applied it. An error leaves the message
// un-acknowledged, so it is delivered again (claimed after the consumer's
// idle time): hooks must be idempotent and should return an error only for
// a failure worth retrying.
type SandboxEventHook interface {
	OnSandboxEvent(ctx context.Context, e events.Event) error
}

// MiddlewareProvider is an optional interface of an Extension: its
// middlewares wrap every route of the control plane (API, port proxy and
// other extensions' routes), outermost first, in extension order.
type MiddlewareProvider interface {
	Middlewares() []func(http.Handler) http.Handler
}

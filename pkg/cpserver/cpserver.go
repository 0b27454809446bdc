// Package cpserver runs the control plane: configuration, logging, Postgres
// (with migrations), Redis, bootstrap, the HTTP API, extensions and graceful
// shutdown, wired by constructor injection in one Run call. cmd/control-plane
// is a thin main around it, and an enterprise build calls it with its own
// extensions.
package cpserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/redis/go-redis/v9"
	"github.com/wrenn/wrenn/db/migrations"
	"github.com/wrenn/wrenn/internal/api"
	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/internal/logging"
	"github.com/wrenn/wrenn/internal/monitor"
	"github.com/wrenn/wrenn/pkg/config"
	"github.com/wrenn/wrenn/pkg/cpextension"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/scheduler"
)

// Option configures Run.
type Option func(*options)

type options struct {
	extensions []cpextension.Extension
	version    string
	env        config.Lookup
	cfg        *config.ControlPlane
	stderr     io.Writer
	listener   net.Listener
	ready      func(addr net.Addr)
	agents     hostclient.Dialer
	now        func() time.Time
	drain      time.Duration
	background time.Duration
	claimIdle  time.Duration
	placement  *scheduler.Policy
}

// WithPlacement replaces the scheduler's admission policy (default
// scheduler.DefaultPolicy with the configured WRENN_CPU_OVERCOMMIT).
func WithPlacement(p scheduler.Policy) Option { return func(o *options) { o.placement = &p } }

// WithEventClaimIdle sets how long an event stays pending with a dead or
// failing consumer before this replica claims it (default 60 s).
func WithEventClaimIdle(d time.Duration) Option { return func(o *options) { o.claimIdle = d } }

// consumerName names this replica in the event consumer group: unique per
// process, recognisable in XINFO CONSUMERS.
func consumerName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "cp"
	}
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), id.Secret(3))
}

// WithExtensions adds extensions, initialised and mounted in order.
func WithExtensions(exts ...cpextension.Extension) Option {
	return func(o *options) { o.extensions = append(o.extensions, exts...) }
}

// WithVersion sets the version reported in logs and to extensions.
func WithVersion(v string) Option { return func(o *options) { o.version = v } }

// WithEnv reads configuration from env instead of the process environment.
func WithEnv(env config.Lookup) Option { return func(o *options) { o.env = env } }

// WithConfig uses cfg as is, skipping the environment.
func WithConfig(cfg config.ControlPlane) Option { return func(o *options) { o.cfg = &cfg } }

// WithStderr sets where text logs go (default os.Stderr).
func WithStderr(w io.Writer) Option { return func(o *options) { o.stderr = w } }

// WithListener serves on l instead of listening on the configured address;
// Run closes it.
func WithListener(l net.Listener) Option { return func(o *options) { o.listener = l } }

// WithReady is called with the listen address once the API serves.
func WithReady(fn func(addr net.Addr)) Option { return func(o *options) { o.ready = fn } }

// WithAgentDialer replaces the Connect client pool (tests use a fake).
func WithAgentDialer(d hostclient.Dialer) Option { return func(o *options) { o.agents = d } }

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithShutdownTimeouts bounds the two phases of shutdown: draining HTTP
// requests (default 30 s) and waiting for background sandbox work (default
// 150 s, past which that work is cancelled and still waited for).
func WithShutdownTimeouts(drain, background time.Duration) Option {
	return func(o *options) { o.drain, o.background = drain, background }
}

// Run starts the control plane and serves until ctx ends, then shuts down:
// stop accepting and drain requests, wait for background sandbox work, stop
// extension workers, then close Redis, Postgres and the log in reverse order
// of opening. It returns the first error that stopped it, nil after a clean
// shutdown.
func Run(ctx context.Context, opts ...Option) (err error) {
	o := options{stderr: os.Stderr, env: config.Env(), drain: 30 * time.Second, background: 150 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	var cfg config.ControlPlane
	if o.cfg != nil {
		cfg = *o.cfg
	} else if cfg, err = config.LoadControlPlane(o.env); err != nil {
		return err
	}

	log, closeLog, err := logging.Setup(ctx, cfg.Dir, "control-plane", cfg.LogLevel, o.stderr)
	if err != nil {
		return fmt.Errorf("set up logging: %w", err)
	}
	defer closeLog()
	defer func() {
		if err != nil {
			log.Error("control plane stopped", "err", err)
		}
	}()
	log.Info("control plane starting", "version", o.version, "listen", cfg.Listen)

	pool, err := connectPostgres(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := Migrate(ctx, pool, log); err != nil {
		return err
	}

	rdb, err := connectRedis(ctx, cfg.RedisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()

	if err := Bootstrap(ctx, pool, cfg.BootstrapAPIKey, cfg.BootstrapAdminEmail, log); err != nil {
		return err
	}

	now := o.now
	if now == nil {
		now = time.Now
	}
	ca, err := LoadCA(ctx, pool, cfg, now(), log)
	if err != nil {
		return err
	}
	// Each replica has its own client certificate, made at start; agents
	// accept any the CA signed for the control plane.
	clientCert, err := ca.ClientCertificate(now())
	if err != nil {
		return fmt.Errorf("issue the control plane's client certificate: %w", err)
	}
	agentTLS := ca.ClientTLS(clientCert)

	agents := o.agents
	if agents == nil {
		p := hostclient.NewPool(agentTLS)
		defer p.Close()
		agents = p
	}
	publisher := events.NewRedisPublisher(rdb)
	// Event streams block on XREAD for their whole life, each holding a
	// connection: a pool of their own keeps them from starving publishes.
	sopts := *rdb.Options()
	sopts.PoolSize = 1024
	sopts.ReadTimeout = 30 * time.Second
	streamRedis := redis.NewClient(&sopts)
	defer streamRedis.Close()
	placement := o.placement
	if placement == nil {
		pol := scheduler.DefaultPolicy
		pol.CPUOvercommit = cfg.CPUOvercommit
		pol.MemoryOvercommit = cfg.MemoryOvercommit
		placement = &pol
	}
	// Port traffic has a transport of its own, apart from the RPC pool.
	proxyTransport := hostclient.NewProxyTransport(agentTLS)
	defer proxyTransport.CloseIdleConnections()
	metrics := api.NewMetrics()
	a := api.New(api.Deps{
		Metrics: metrics, MetricsToken: cfg.MetricsToken, Domain: cfg.Domain, ProxyTransport: proxyTransport, CA: ca,
		DB: pool, Agents: agents, Events: publisher, Logger: log, Now: o.now, Redis: streamRedis, Placement: placement, PublicURL: cfg.PublicURL,
		Health: func(ctx context.Context) error {
			if err := pool.Ping(ctx); err != nil {
				return fmt.Errorf("postgres: %w", err)
			}
			if err := rdb.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("redis: %w", err)
			}
			return nil
		},
	})
	// Workers (extensions, the event consumer) stop after background
	// sandbox work finished (defers run last-in first-out), so events that
	// work publishes can still be consumed while it runs.
	stopAllWorkers := func() {}
	defer func() { stopAllWorkers() }()
	// Background sandbox work is waited for on every return path once the
	// API exists, so no goroutine outlives the pool it writes to.
	defer func() {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.background)
		defer cancel()
		if werr := a.Wait(wctx); werr != nil {
			log.Warn("background sandbox work cancelled at shutdown", "err", werr)
		}
	}()

	router := chi.NewRouter()
	// Extensions' middlewares wrap everything, so they go on the router
	// before any route (chi refuses Use after routes are mounted).
	for _, ext := range o.extensions {
		if mp, ok := ext.(cpextension.MiddlewareProvider); ok {
			router.Use(mp.Middlewares()...)
		}
	}
	a.Routes(router)
	sc := &cpextension.ServerContext{
		Config: cfg, Version: o.version, Logger: log, DB: pool, Queries: db.New(pool), Redis: rdb, Events: publisher, Metrics: metrics.Registry(),
		RequireAPIKey: a.RequireAPIKey,
		Sandboxes:     a.Sandboxes(),
		CallerFrom: func(ctx context.Context) (cpextension.Caller, bool) {
			p, ok := api.PrincipalFrom(ctx)
			return cpextension.Caller{KeyID: p.KeyID, TeamID: p.TeamID, UserID: p.UserID, Admin: p.Admin}, ok
		},
	}
	var workers []cpextension.Worker
	for _, ext := range o.extensions {
		if err := ext.Init(ctx, sc); err != nil {
			return fmt.Errorf("initialise extension %s: %w", ext.Name(), err)
		}
		ext.RegisterRoutes(router)
		workers = append(workers, ext.BackgroundWorkers()...)
	}

	ln := o.listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return fmt.Errorf("listen on %s (WRENN_CP_LISTEN): %w", cfg.Listen, err)
		}
	}
	srv := &http.Server{
		Handler:           router,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       620 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	// Event streams never end by themselves; end them when draining starts.
	srv.RegisterOnShutdown(a.CloseStreams)

	// The fallback writer: one consumer per replica in the shared group.
	// Extensions' event hooks run after the built-in writer applied each
	// event; a failing hook leaves the event pending for redelivery.
	var hooks []events.Handler
	for _, ext := range o.extensions {
		if h, ok := ext.(cpextension.SandboxEventHook); ok {
			hooks = append(hooks, h.OnSandboxEvent)
		}
	}
	consumer := events.NewConsumer(rdb, a.ApplyEvent, events.ConsumerOptions{
		Name: consumerName(), MinIdle: o.claimIdle, Logger: log, Hooks: hooks, OnLag: metrics.ObserveConsumerLag,
	})
	workers = append(workers, cpextension.Worker{Name: "event-consumer", Run: consumer.Run})
	// The safety net: one pass a minute, on one replica at a time.
	mon := monitor.New(monitor.Options{DB: pool, Agents: agents, Events: publisher, Logger: log, Now: o.now})
	workers = append(workers, cpextension.Worker{Name: "host-monitor", Run: mon.Run})

	workCtx, stopWorkers := context.WithCancel(context.WithoutCancel(ctx))
	var workerWG sync.WaitGroup
	stopAllWorkers = func() {
		stopWorkers()
		workerWG.Wait()
	}
	for _, w := range workers {
		workerWG.Add(1)
		go func() {
			defer workerWG.Done()
			if werr := w.Run(workCtx); werr != nil && workCtx.Err() == nil {
				log.Error("extension worker failed", "worker", w.Name, "err", werr)
			}
		}()
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("control plane serving", "addr", ln.Addr().String())
	if o.ready != nil {
		o.ready(ln.Addr())
	}

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("serve HTTP: %w", err)
	}
	log.Info("control plane shutting down")
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.drain)
	defer cancel()
	if err := srv.Shutdown(dctx); err != nil {
		log.Warn("HTTP requests still running after the drain timeout; closing them", "err", err)
		_ = srv.Close()
	}
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("HTTP server", "err", err)
	}
	// The deferred calls now wait for background work, stop the workers and
	// close Redis, Postgres and the log, in that order.
	return nil
}

func connectPostgres(ctx context.Context, dsn string) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to postgres at %s:%d (DATABASE_URL): %w", pcfg.ConnConfig.Host, pcfg.ConnConfig.Port, err)
	}
	return pool, nil
}

func connectRedis(ctx context.Context, url string) (*redis.Client, error) {
	ropts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	rdb := redis.NewClient(ropts)
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("connect to redis at %s (REDIS_URL): %w", ropts.Addr, err)
	}
	return rdb, nil
}

// Migrate applies the embedded migrations that are not applied yet.
func Migrate(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	sqlDB := stdlib.OpenDBFromPool(pool)
	defer sqlDB.Close()
	results, err := migrations.Apply(ctx, sqlDB)
	if err != nil {
		return err
	}
	for _, r := range results {
		log.Info("applied migration", "version", r.Source.Version, "file", r.Source.Path, "duration", r.Duration)
	}
	return nil
}

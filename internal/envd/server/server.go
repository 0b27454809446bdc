// Package server is envd's network face: the Connect/gRPC/gRPC-Web
// process.Process and filesystem.Filesystem services and the plain HTTP routes
// (/health, /init, /envs, /metrics, /files) on one port, over HTTP/1.1 and h2c.
//
// Everything but GET /health needs the sandbox's access token once /init set
// one, /init included, so nobody can take over a sandbox by initialising it
// again.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn/wrenn/internal/envd/account"
	"github.com/wrenn/wrenn/internal/envd/process"
	"github.com/wrenn/wrenn/proto/envd/filesystem/filesystemconnect"
	"github.com/wrenn/wrenn/proto/envd/process/processconnect"
)

// Options configures a Server. Zero values pick working defaults.
type Options struct {
	// Logger receives envd's logs; nil discards them.
	Logger *slog.Logger
	// Users resolves user names; the zero value reads /etc/passwd and /etc/group.
	Users account.Database
	// BaseEnv is the environment every process starts from, before the
	// user's identity, /init's variables and the request's (envd passes its
	// own environment, which is the image's).
	BaseEnv []string
	// DefaultUser is used when neither the request nor /init names one
	// (default "root").
	DefaultUser string
	// SetClock sets the system clock when /init brings a time ahead of it
	// (default: clock_settime(CLOCK_REALTIME)). Tests replace it.
	SetClock func(time.Time) error
	// Now reads the clock (default time.Now).
	Now func() time.Time
	// Process tunes the process manager.
	Process process.Options
	// DiskPath is the filesystem /metrics reports on (default "/").
	DiskPath string
	// ShutdownTimeout bounds how long Serve waits for processes and requests
	// to end after its context ended (default 5 s).
	ShutdownTimeout time.Duration
}

// Server holds envd's state: the processes it started and what /init set.
type Server struct {
	log      *slog.Logger
	opts     Options
	procs    *process.Manager
	state    state
	watchers watchers
	root     bool // envd runs as root and can act as any user
}

// New returns a Server ready to be served.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.DefaultUser == "" {
		opts.DefaultUser = "root"
	}
	if opts.SetClock == nil {
		opts.SetClock = setSystemClock
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.DiskPath == "" {
		opts.DiskPath = "/"
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = 5 * time.Second
	}
	return &Server{
		log:   opts.Logger,
		opts:  opts,
		root:  os.Geteuid() == 0,
		procs: process.NewManager(opts.Logger, opts.Process),
		state: state{envs: map[string]string{}},
	}
}

// maxMessageBytes bounds one RPC message (input chunks, start requests).
const maxMessageBytes = 32 << 20

// Handler returns the HTTP handler serving every route and RPC.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	// Messages under 1 KiB go uncompressed even to clients that accept
	// gzip: compressing an exec's start event costs more than it saves.
	path, h := processconnect.NewProcessHandler(&processService{s: s}, connect.WithReadMaxBytes(maxMessageBytes), connect.WithCompressMinBytes(1024))
	mux.Handle(path, h)
	path, h = filesystemconnect.NewFilesystemHandler(&filesystemService{s: s}, connect.WithReadMaxBytes(maxMessageBytes), connect.WithCompressMinBytes(1024))
	mux.Handle(path, h)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("POST /init", s.handleInit)
	mux.HandleFunc("GET /envs", s.handleEnvs)
	mux.HandleFunc("GET /metrics", s.handleMetrics)
	mux.HandleFunc("GET /files", s.handleGetFile)
	mux.HandleFunc("POST /files", s.handlePostFile)
	return cors(s.authenticate(mux))
}

// Serve serves on ln until ctx ends or serving fails. On the way out it stops
// accepting, kills the process groups it started, waits up to
// ShutdownTimeout for them and for open requests, then closes what is left.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{
		Handler:           s.Handler(),
		Protocols:         &protocols,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()

	var serveErr error
	select {
	case err := <-errc:
		serveErr = fmt.Errorf("serve envd on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}

	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.ShutdownTimeout)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- hs.Shutdown(sctx) }()
	s.watchers.closeAll()
	if err := s.procs.Shutdown(sctx); err != nil {
		s.log.Warn("processes still running at shutdown", "error", err)
	}
	if err := <-shut; err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Warn("requests still open at shutdown; closing them", "error", err)
		_ = hs.Close()
	}
	return serveErr
}

// Close stops every watcher, kills every process the server started and
// waits for them; for
// callers that use Handler without Serve.
func (s *Server) Close(ctx context.Context) error {
	s.watchers.closeAll()
	return s.procs.Shutdown(ctx)
}

// cors lets browser SDKs call envd from any origin; access still needs the
// token.
func cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		if origin := r.Header.Get("Origin"); origin != "" {
			h.Set("Access-Control-Allow-Origin", "*")
			h.Set("Access-Control-Expose-Headers", "Grpc-Status, Grpc-Message, Grpc-Status-Details-Bin, Connect-Protocol-Version, Content-Encoding")
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
				// Echo the asked-for headers: "*" would not cover
				// Authorization, which the SDKs send to pick the user.
				if asked := r.Header.Get("Access-Control-Request-Headers"); asked != "" {
					h.Set("Access-Control-Allow-Headers", asked)
				}
				h.Add("Vary", "Access-Control-Request-Headers")
				h.Set("Access-Control-Max-Age", "7200")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

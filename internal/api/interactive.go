package api

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// CodeNoSpace is the error code of a 507: the sandbox's disk is full.
const CodeNoSpace = "no_space"

// DefaultMaxUploadBytes bounds PUT /v1/sandboxes/{id}/files when
// Deps.MaxUploadBytes is 0.
const DefaultMaxUploadBytes = 5 << 30

// interactiveRoutes mounts the routes that work inside a running sandbox:
// exec streams, processes, terminals, files and metrics. They go through
// the authenticated group of Routes.
func (a *API) interactiveRoutes(r chi.Router) {
	r.Get("/sandboxes/{id}/exec/stream", a.execStream)
	r.Get("/sandboxes/{id}/processes", a.listProcesses)
	r.Delete("/sandboxes/{id}/processes/{pid}", a.killProcess)
	r.Get("/sandboxes/{id}/processes/{pid}/attach", a.attachProcess)
	r.Get("/sandboxes/{id}/pty", a.ptySession)
	r.Get("/sandboxes/{id}/files", a.downloadFile)
	r.Put("/sandboxes/{id}/files", a.uploadFile)
	r.Delete("/sandboxes/{id}/files", a.removeFile)
	r.Get("/sandboxes/{id}/files/list", a.listFiles)
	r.Get("/sandboxes/{id}/files/stat", a.statFile)
	r.Post("/sandboxes/{id}/files/mkdir", a.makeDir)
	r.Get("/sandboxes/{id}/metrics", a.sandboxMetrics)
}

// runningSandbox returns the caller's sandbox {id} and its host's agent,
// refusing with 409 a sandbox that is not running. Other teams' sandboxes
// are 404.
func (a *API) runningSandbox(r *http.Request) (db.Sandbox, hostclient.Agent, error) {
	sb, err := a.loadSandbox(r)
	if err != nil {
		return db.Sandbox{}, nil, err
	}
	if sb.Status != string(lifecycle.Running) {
		return db.Sandbox{}, nil, conflict(fmt.Sprintf("sandbox %s is %s; this works only in a running sandbox (resume it first)", sb.ID, sb.Status))
	}
	agent, err := a.hostAgent(r.Context(), sb)
	if err != nil {
		return db.Sandbox{}, nil, err
	}
	return sb, agent, nil
}

// insideError maps a failed call inside a sandbox: here "not found" is the
// process or path the agent names (the sandbox itself was checked), and its
// message describes the caller's request.
func insideError(err error) error {
	var he *hostclient.Error
	if errors.As(err, &he) && he.Message != "" {
		switch {
		case errors.Is(err, hostclient.ErrNotFound):
			return &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: he.Message, Cause: err}
		case errors.Is(err, hostclient.ErrInvalid):
			return &Error{Status: http.StatusBadRequest, Code: CodeInvalidArgument, Message: he.Message, Cause: err}
		case errors.Is(err, hostclient.ErrNoSpace):
			return &Error{Status: http.StatusInsufficientStorage, Code: CodeNoSpace, Message: "the sandbox's disk is full; free space or create the sandbox with a larger disk_mb", Cause: err}
		}
	}
	return err
}

// parsePID reads the {pid} route parameter.
func parsePID(r *http.Request) (uint32, error) {
	s := chi.URLParam(r, "pid")
	pid, err := strconv.ParseUint(s, 10, 32)
	if err != nil || pid == 0 {
		return 0, invalid("pid", "must be a positive integer, got %q", s)
	}
	return uint32(pid), nil
}

// parseSignal reads a signal name: SIGTERM or SIGKILL, with or without the
// SIG prefix, any case.
func parseSignal(field, s string) (hostclient.Signal, error) {
	switch strings.TrimPrefix(strings.ToUpper(s), "SIG") {
	case "TERM":
		return hostclient.SignalTerm, nil
	case "KILL":
		return hostclient.SignalKill, nil
	}
	return "", invalid(field, "must be SIGTERM or SIGKILL, got %q", s)
}

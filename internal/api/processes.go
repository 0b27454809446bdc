package api

import (
	"context"
	"net/http"

	"github.com/wrenn/wrenn/internal/hostclient"
)

// BackgroundProcess is the 202 answer of a background exec.
type BackgroundProcess struct {
	PID uint32 `json:"pid"`
	Tag string `json:"tag,omitempty"`
}

// maxTagLen bounds a process tag.
const maxTagLen = 256

// execBackground starts req as a background process and answers 202 with
// its pid; the caller has validated req and loaded the sandbox.
func (a *API) execBackground(w http.ResponseWriter, r *http.Request, agent hostclient.Agent, sandboxID string, req hostclient.ProcessRequest) {
	if len(req.Tag) > maxTagLen {
		a.fail(w, r, invalid("tag", "is longer than %d bytes", maxTagLen))
		return
	}
	p, err := agent.StartBackground(r.Context(), req)
	if err != nil {
		a.fail(w, r, insideError(err))
		return
	}
	writeJSON(w, http.StatusAccepted, BackgroundProcess{PID: p.PID, Tag: p.Tag})
}

func (a *API) listProcesses(w http.ResponseWriter, r *http.Request) {
	sb, agent, err := a.runningSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	procs, err := agent.ListProcesses(r.Context(), sb.ID)
	if err != nil {
		a.fail(w, r, insideError(err))
		return
	}
	if procs == nil {
		procs = []hostclient.ProcessInfo{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"processes": procs})
}

// killProcess signals a process: SIGKILL unless ?signal=SIGTERM.
func (a *API) killProcess(w http.ResponseWriter, r *http.Request) {
	pid, err := parsePID(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	sig := hostclient.SignalKill
	if s := r.URL.Query().Get("signal"); s != "" {
		if sig, err = parseSignal("signal", s); err != nil {
			a.fail(w, r, err)
			return
		}
	}
	sb, agent, err := a.runningSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := agent.SignalProcess(context.WithoutCancel(r.Context()), sb.ID, hostclient.Selector{PID: pid}, sig); err != nil {
		a.fail(w, r, insideError(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/lifecycle"
	"github.com/wrenn/wrenn/pkg/service"
	"github.com/wrenn/wrenn/pkg/validate"
)

// heartbeatWindow is how recent a host's heartbeat must be for placement
// (agents beat every 30 s).
const heartbeatWindow = 90 * time.Second

// Sandbox is a sandbox as the API shows it.
type Sandbox = service.Sandbox

func sandboxJSON(s db.Sandbox) Sandbox {
	meta := map[string]string{}
	// The column is a JSON object of strings by its check and by what
	// writes it; a row that is not is shown without metadata.
	_ = json.Unmarshal(s.Metadata, &meta)
	return Sandbox{
		ID: s.ID, Template: s.Template, Status: s.Status,
		VCPUs: int(s.Vcpus), MemoryMB: int(s.MemoryMb), DiskMB: s.DiskMb, TimeoutSec: int(s.TimeoutSec),
		Metadata: meta, AllowInternet: s.AllowInternet,
		HostID: s.HostID, CreatedAt: s.CreatedAt, StartedAt: s.StartedAt, StoppedAt: s.StoppedAt,
		Error: s.Error, EnvdVersion: s.EnvdVersion,
	}
}

func (a *API) createSandbox(w http.ResponseWriter, r *http.Request) {
	var req service.CreateSandbox
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	created, err := a.Sandboxes().Create(r.Context(), callerOf(r), req)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.reqLog(r).Info("sandbox accepted", "sandbox_id", created.ID, "host_id", created.HostID)
	writeJSON(w, http.StatusAccepted, created)
}

// startSandbox asks the host to boot sb and records the outcome with
// compare-and-set writes. It runs in the background.
// env is the sandbox's environment, which only the host keeps.
func (a *API) startSandbox(ctx context.Context, sb db.Sandbox, address, actor string, env map[string]string) {
	log := a.log.With("sandbox_id", sb.ID, "team_id", sb.TeamID, "host_id", sb.HostID)
	agent, err := a.d.Agents.Agent(sb.HostID, address)
	var res hostclient.Sandbox
	if err == nil {
		res, err = agent.CreateSandbox(ctx, hostclient.CreateRequest{
			SandboxID:     sb.ID,
			Template:      sb.Template,
			VCPUs:         uint32(sb.Vcpus),
			MemoryMB:      uint32(sb.MemoryMb),
			DiskMB:        uint64(sb.DiskMb),
			TimeoutSec:    uint32(sb.TimeoutSec),
			Envs:          env,
			AllowInternet: sb.AllowInternet,
		})
	}
	// Writes and cleanup must happen even when the deadline hit the RPC.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err != nil {
		log.Warn("create sandbox on host failed", "err", err)
		// Call it an error only once the host confirms nothing is left;
		// otherwise the sandbox stays starting and the host monitor settles
		// it past its grace period from what the host then reports.
		if agent != nil {
			if derr := agent.DestroySandbox(wctx, sb.ID); derr != nil && !errors.Is(derr, hostclient.ErrNotFound) {
				log.Warn("clean up after failed create; leaving the sandbox starting for the host monitor", "err", derr)
				return
			}
		}
		a.settleError(wctx, sb, lifecycle.Starting, createFailure(err, a.d.AgentTimeout), "worker")
		return
	}
	started := res.StartedAt
	if started.IsZero() {
		started = a.d.Now()
	}
	disk := int64(res.DiskMB)
	if disk == 0 {
		disk = sb.DiskMb
	}
	// The outcome is published before it is recorded: if this process dies
	// in between, the event consumer records it instead (the same
	// compare-and-set, at the generation the row was inserted with).
	info := &events.RunningInfo{HostIP: res.HostIP, GuestIP: res.GuestIP, EnvdVersion: res.EnvdVersion, DiskMB: disk, StartedAt: started}
	a.publish(wctx, log, events.Event{SandboxID: sb.ID, TeamID: sb.TeamID, HostID: sb.HostID, From: lifecycle.Starting, To: lifecycle.Running, Generation: sb.Generation, Actor: actor, Running: info})
	_, err = a.q.UpdateSandboxRunningIf(wctx, runningParams(sb.ID, sb.TeamID, lifecycle.Starting, sb.Generation, info))
	switch {
	case err == nil:
		log.Info("sandbox running")
	case isNoRows(err):
		// Someone moved it on while it booted: the event consumer recorded
		// it already, or a delete came in. If it is on its way out, the
		// destroy may have run before the sandbox existed on the host:
		// destroy it again so nothing is left behind.
		cur, gerr := a.q.GetSandbox(wctx, db.GetSandboxParams{ID: sb.ID, TeamID: sb.TeamID})
		if gerr != nil {
			log.Error("re-read sandbox after lost race", "err", gerr)
			return
		}
		if cur.Status == string(lifecycle.Running) {
			log.Info("sandbox running", "recorded_by", "event consumer")
			return
		}
		log.Info("sandbox changed while starting", "status", cur.Status)
		if st := lifecycle.Status(cur.Status); st == lifecycle.Stopping || st == lifecycle.Stopped {
			if derr := agent.DestroySandbox(wctx, sb.ID); derr != nil && !errors.Is(derr, hostclient.ErrNotFound) {
				log.Error("destroy sandbox that was deleted while starting", "err", derr)
			}
		}
	default:
		log.Error("record running sandbox", "err", err)
	}
}

func runningParams(sid, teamID string, expected lifecycle.Status, generation int64, r *events.RunningInfo) db.UpdateSandboxRunningIfParams {
	started := r.StartedAt
	return db.UpdateSandboxRunningIfParams{
		ID: sid, TeamID: teamID, Expected: string(expected), Generation: generation,
		HostIp: r.HostIP, GuestIp: r.GuestIP, EnvdVersion: r.EnvdVersion, DiskMb: r.DiskMB, StartedAt: &started,
	}
}

// createFailure is the user-readable reason a create failed.
func createFailure(err error, timeout time.Duration) string {
	var he *hostclient.Error
	errors.As(err, &he)
	switch {
	case errors.Is(err, hostclient.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("the sandbox did not start within %s", timeout)
	case errors.Is(err, hostclient.ErrUnavailable):
		return "the host could not be reached to start the sandbox"
	case he != nil && (errors.Is(err, hostclient.ErrInvalid) || errors.Is(err, hostclient.ErrConflict)):
		return "the host refused to start the sandbox: " + he.Message
	}
	return "the host failed to start the sandbox"
}

// settleError publishes and then records (CAS) sb's move from expected to
// error, at sb's generation (see settleStatus).
func (a *API) settleError(ctx context.Context, sb db.Sandbox, expected lifecycle.Status, msg, actor string) {
	a.settleStatus(ctx, sb, expected, lifecycle.Error, msg, actor)
}

// publish sends an event; a Redis failure is logged, never the caller's
// failure.
func (a *API) publish(ctx context.Context, log *slog.Logger, e events.Event) {
	if e.Time.IsZero() {
		e.Time = a.d.Now().UTC()
	}
	a.observeOutcome(ctx, e)
	if a.d.Events == nil {
		return
	}
	if err := a.d.Events.Publish(ctx, e); err != nil {
		log.Warn("publish lifecycle event", "err", err, "from", e.From, "to", e.To)
	}
}

// listSandboxes is GET /v1/sandboxes: a page of the team's sandboxes,
// filtered by status and metadata (service.ParseListQuery).
func (a *API) listSandboxes(w http.ResponseWriter, r *http.Request) {
	q, err := service.ParseListQuery(r.URL.Query())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	page, err := a.Sandboxes().List(r.Context(), principal(r).TeamID, q)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// loadSandbox returns the caller's sandbox {id}; another team's is "not
// found", never "forbidden", so ids of other teams cannot be probed.
func (a *API) loadSandbox(r *http.Request) (db.Sandbox, error) {
	return a.sandboxOf(r.Context(), principal(r).TeamID, chi.URLParam(r, "id"))
}

// sandboxOf returns teamID's sandbox sid.
func (a *API) sandboxOf(ctx context.Context, teamID, sid string) (db.Sandbox, error) {
	if !id.Valid(id.Sandbox, sid) {
		return db.Sandbox{}, notFound("sandbox", sid)
	}
	sb, err := a.q.GetSandbox(ctx, db.GetSandboxParams{ID: sid, TeamID: teamID})
	if isNoRows(err) {
		return db.Sandbox{}, notFound("sandbox", sid)
	}
	if err != nil {
		return db.Sandbox{}, fmt.Errorf("get sandbox %s: %w", sid, err)
	}
	return sb, nil
}

func (a *API) getSandbox(w http.ResponseWriter, r *http.Request) {
	sb, err := a.loadSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sandboxJSON(sb))
}

func (a *API) deleteSandbox(w http.ResponseWriter, r *http.Request) {
	if err := a.Sandboxes().Destroy(r.Context(), callerOf(r), chi.URLParam(r, "id")); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// beginDestroy moves the sandbox to stopping and destroys it on its host in
// the background; a sandbox stopping or stopped already is left as it is.
func (a *API) beginDestroy(ctx context.Context, c service.Caller, sid string) error {
	return a.beginMove(ctx, c, sid, move{
		via: lifecycle.Stopping,
		accept: func(sb db.Sandbox) (bool, error) {
			from := lifecycle.Status(sb.Status)
			if from == lifecycle.Stopping || from == lifecycle.Stopped {
				return true, nil
			}
			return false, lifecycle.Check(from, lifecycle.Stopping)
		},
		run: a.stopSandbox,
		abandon: func(ctx context.Context, moved db.Sandbox, why, actor string) {
			a.settleError(ctx, moved, lifecycle.Stopping, why, actor)
		},
		shutdown: "the control plane shut down before the sandbox was stopped; delete it again",
	})
}

// stopSandbox destroys sb on its host and records stopped, or error when the
// host failed. It runs in the background.
func (a *API) stopSandbox(ctx context.Context, sb db.Sandbox, address, actor string) {
	log := a.log.With("sandbox_id", sb.ID, "team_id", sb.TeamID, "host_id", sb.HostID)
	agent, err := a.d.Agents.Agent(sb.HostID, address)
	if err == nil {
		err = agent.DestroySandbox(ctx, sb.ID)
		if errors.Is(err, hostclient.ErrNotFound) {
			err = nil // gone already: that is what we wanted
		}
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err != nil {
		log.Warn("destroy sandbox on host failed", "err", err)
		msg := "the host failed to stop the sandbox; delete it again"
		if errors.Is(err, hostclient.ErrUnavailable) || errors.Is(err, hostclient.ErrTimeout) {
			msg = "the host could not be reached to stop the sandbox; delete it again"
		}
		a.settleError(wctx, sb, lifecycle.Stopping, msg, "worker")
		return
	}
	if a.settleStatus(wctx, sb, lifecycle.Stopping, lifecycle.Stopped, "", actor) {
		log.Info("sandbox stopped")
	}
}

// execRequest is POST /v1/sandboxes/{id}/exec. Args is a pointer so an
// absent list (run cmd with /bin/sh -c) differs from an empty one.
type execRequest struct {
	Cmd        string            `json:"cmd"`
	Args       *[]string         `json:"args"`
	Env        map[string]string `json:"env"`
	Cwd        string            `json:"cwd"`
	User       string            `json:"user"`
	TimeoutSec *int              `json:"timeout_sec"`
	// Background starts the command and answers 202 with its pid at once
	// (processes.go); Tag names it for later lookups.
	Background bool   `json:"background"`
	Tag        string `json:"tag"`
}

// ExecResult is the answer of POST /v1/sandboxes/{id}/exec.
type ExecResult struct {
	Stdout     string `json:"stdout"`
	Stderr     string `json:"stderr"`
	ExitCode   int    `json:"exit_code"`
	TimedOut   bool   `json:"timed_out"`
	DurationMS int64  `json:"duration_ms"`
}

const maxExecTimeoutSec = 3600

func (a *API) execSandbox(w http.ResponseWriter, r *http.Request) {
	var req execRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if req.Cmd == "" {
		a.fail(w, r, invalid("cmd", "is required"))
		return
	}
	timeout := 60
	if req.TimeoutSec != nil {
		timeout = *req.TimeoutSec
	}
	if timeout < 1 || timeout > maxExecTimeoutSec {
		a.fail(w, r, invalid("timeout_sec", "must be between 1 and %d, got %d", maxExecTimeoutSec, timeout))
		return
	}
	if err := validate.Env("env", req.Env); err != nil {
		a.fail(w, r, err)
		return
	}
	sb, agent, err := a.runningSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	cmd, args := req.Cmd, []string(nil)
	if req.Args == nil {
		cmd, args = "/bin/sh", []string{"-c", req.Cmd}
	} else {
		args = *req.Args
	}
	if req.Background {
		a.execBackground(w, r, agent, sb.ID, hostclient.ProcessRequest{
			SandboxID: sb.ID, Cmd: cmd, Args: args, Env: req.Env, Cwd: req.Cwd, User: req.User, Tag: req.Tag,
		})
		return
	}
	// The agent enforces the command's timeout; ours only guards against a
	// host that never answers.
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(timeout)*time.Second+30*time.Second)
	defer cancel()
	res, err := agent.Exec(ctx, hostclient.ExecRequest{
		SandboxID: sb.ID, Cmd: cmd, Args: args, Env: req.Env, Cwd: req.Cwd, User: req.User, TimeoutSec: uint32(timeout),
	})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ExecResult{
		Stdout: string(res.Stdout), Stderr: string(res.Stderr), ExitCode: res.ExitCode,
		TimedOut: res.TimedOut, DurationMS: res.Duration.Milliseconds(),
	})
}

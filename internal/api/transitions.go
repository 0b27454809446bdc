package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/lifecycle"
	"github.com/wrenn/wrenn/pkg/service"
	"github.com/wrenn/wrenn/pkg/validate"
)

// asyncOp is a user-started transition that answers 202 and finishes in the
// background: from → via at once (compare-and-set), then the agent RPC, then
// via → done on success or via → fail when the host refused or failed.
type asyncOp struct {
	verb string // "pause", "resume": for messages
	from lifecycle.Status
	via  lifecycle.Status
	done lifecycle.Status
	fail lifecycle.Status
	// noop statuses answer 202 without doing anything: the operation is
	// under way or done already.
	noop []lifecycle.Status
	rpc  func(ctx context.Context, a hostclient.Agent, sandboxID string) error
}

var (
	pauseOp = asyncOp{
		verb: "pause", from: lifecycle.Running, via: lifecycle.Pausing, done: lifecycle.Paused, fail: lifecycle.Running,
		noop: []lifecycle.Status{lifecycle.Pausing, lifecycle.Paused},
		rpc: func(ctx context.Context, a hostclient.Agent, sid string) error {
			_, err := a.PauseSandbox(ctx, sid)
			return err
		},
	}
	resumeOp = asyncOp{
		verb: "resume", from: lifecycle.Paused, via: lifecycle.Resuming, done: lifecycle.Running, fail: lifecycle.Paused,
		noop: []lifecycle.Status{lifecycle.Resuming, lifecycle.Running},
		rpc: func(ctx context.Context, a hostclient.Agent, sid string) error {
			_, err := a.ResumeSandbox(ctx, sid)
			return err
		},
	}
)

func (a *API) pauseSandbox(w http.ResponseWriter, r *http.Request) {
	a.answerOp(w, r, a.Sandboxes().Pause(r.Context(), callerOf(r), chi.URLParam(r, "id")))
}

func (a *API) resumeSandbox(w http.ResponseWriter, r *http.Request) {
	a.answerOp(w, r, a.Sandboxes().Resume(r.Context(), callerOf(r), chi.URLParam(r, "id")))
}

// answerOp is 202 with an empty body for an operation under way, or its
// error.
func (a *API) answerOp(w http.ResponseWriter, r *http.Request, err error) {
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// wrongState is the 409 of an operation refused in the sandbox's status.
func wrongState(sb db.Sandbox, what string) *Error {
	return conflict(fmt.Sprintf("sandbox %s is %s; %s", sb.ID, sb.Status, what))
}

// beginOp moves the sandbox from op.from to op.via and runs op on its host
// in the background; a sandbox where op is under way or done is left as it
// is.
func (a *API) beginOp(ctx context.Context, c service.Caller, sid string, op asyncOp) error {
	return a.beginMove(ctx, c, sid, move{
		via: op.via,
		accept: func(sb db.Sandbox) (bool, error) {
			cur := lifecycle.Status(sb.Status)
			if slices.Contains(op.noop, cur) {
				return true, nil
			}
			if cur != op.from {
				return false, wrongState(sb, fmt.Sprintf("only a %s sandbox can be %sd", op.from, op.verb))
			}
			return false, nil
		},
		run: func(ctx context.Context, moved db.Sandbox, address, actor string) {
			a.runOp(ctx, op, moved, address, actor)
		},
		abandon: func(ctx context.Context, moved db.Sandbox, why, actor string) {
			a.settleStatus(ctx, moved, op.via, op.fail, why, actor)
		},
		shutdown: "the control plane shut down before the sandbox could be " + op.verb + "d",
	})
}

// move is a user-started transition as beginMove runs it.
type move struct {
	// via is the transient status the sandbox is moved to at once.
	via lifecycle.Status
	// accept judges the sandbox as read: done means the move is under way
	// or over already (nothing to do), an error refuses it.
	accept func(sb db.Sandbox) (done bool, err error)
	// run does the host's part in the background; moved is the row as the
	// move to via left it.
	run func(ctx context.Context, moved db.Sandbox, address, actor string)
	// abandon settles moved out of via when run cannot be started, why
	// saying so.
	abandon func(ctx context.Context, moved db.Sandbox, why, actor string)
	// shutdown is why, when the control plane is shutting down.
	shutdown string
}

// beginMove moves the sandbox to m.via with a compare-and-set, publishes
// that, and starts m.run in the background. It retries when another writer
// moved the sandbox between the read and the compare-and-set; a handful of
// rounds settles any real race.
func (a *API) beginMove(ctx context.Context, c service.Caller, sid string, m move) error {
	sb, err := a.sandboxOf(ctx, c.TeamID, sid)
	if err != nil {
		return err
	}
	log := a.log.With("request_id", RequestID(ctx))
	for range 5 {
		if done, err := m.accept(sb); done || err != nil {
			return err
		}
		from := lifecycle.Status(sb.Status)
		moved, err := a.q.UpdateSandboxStatusIf(ctx, db.UpdateSandboxStatusIfParams{
			ID: sb.ID, TeamID: sb.TeamID, Expected: string(from), Generation: sb.Generation, Status: string(m.via),
		})
		if err == nil {
			a.publish(ctx, log, events.Event{SandboxID: sb.ID, TeamID: sb.TeamID, HostID: sb.HostID, From: from, To: m.via, Generation: sb.Generation, Actor: c.Actor})
			host, herr := a.q.GetHost(ctx, moved.HostID)
			if herr != nil {
				m.abandon(context.WithoutCancel(ctx), moved, "the sandbox's host is unknown", c.Actor)
				return fmt.Errorf("get host %s: %w", moved.HostID, herr)
			}
			if err := a.goBackground(func(ctx context.Context) { m.run(ctx, moved, host.Address, c.Actor) }); err != nil {
				m.abandon(context.WithoutCancel(ctx), moved, m.shutdown, c.Actor)
				return err
			}
			return nil
		}
		if !isNoRows(err) {
			return fmt.Errorf("mark sandbox %s: %w", m.via, err)
		}
		if sb, err = a.sandboxOf(ctx, c.TeamID, sid); err != nil {
			return err
		}
	}
	return conflict("the sandbox is changing state; try again")
}

// runOp calls the agent and records the outcome. It runs in the background.
// sb is the row as its move to op.via left it: the outcome applies only to
// that generation, never to a later operation that passed through op.via.
func (a *API) runOp(ctx context.Context, op asyncOp, sb db.Sandbox, address, actor string) {
	log := a.log.With("sandbox_id", sb.ID, "team_id", sb.TeamID, "host_id", sb.HostID)
	agent, err := a.d.Agents.Agent(sb.HostID, address)
	if err == nil {
		err = op.rpc(ctx, agent, sb.ID)
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	switch {
	case err == nil:
		a.settleStatus(wctx, sb, op.via, op.done, "", actor)
		log.Info("sandbox " + op.verb + "d")
	case errors.Is(err, hostclient.ErrNotFound):
		// The host no longer has it: that is the truth to record.
		log.Warn(op.verb+" found no sandbox on the host", "err", err)
		a.settleStatus(wctx, sb, op.via, lifecycle.Stopped, "the sandbox no longer exists on its host", "worker")
	default:
		log.Warn(op.verb+" sandbox on host failed", "err", err)
		a.settleStatus(wctx, sb, op.via, op.fail, opFailure(op.verb, err), "worker")
	}
}

func opFailure(verb string, err error) string {
	var he *hostclient.Error
	errors.As(err, &he)
	switch {
	case errors.Is(err, hostclient.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "the host did not " + verb + " the sandbox in time"
	case errors.Is(err, hostclient.ErrUnavailable):
		return "the host could not be reached to " + verb + " the sandbox"
	case he != nil && (errors.Is(err, hostclient.ErrInvalid) || errors.Is(err, hostclient.ErrConflict)):
		return "the host refused to " + verb + " the sandbox: " + he.Message
	}
	return "the host failed to " + verb + " the sandbox"
}

// settleStatus publishes and then records (CAS) sb's move from expected to
// to, at sb's generation: sb is the row as this writer left it in
// expected. The event consumer applies the same compare-and-set from the
// event, so whichever of the two comes second changes nothing. msg is the
// failure that caused it, if any; it is recorded in the row only when to is
// error.
func (a *API) settleStatus(ctx context.Context, sb db.Sandbox, expected, to lifecycle.Status, msg, actor string) bool {
	log := a.log.With("sandbox_id", sb.ID, "team_id", sb.TeamID, "host_id", sb.HostID)
	e := events.Event{SandboxID: sb.ID, TeamID: sb.TeamID, HostID: sb.HostID, From: expected, To: to, Generation: sb.Generation, Actor: actor, Error: msg, Time: a.d.Now().UTC()}
	a.publish(ctx, log, e)
	ok, err := a.applyTransition(ctx, e)
	if err != nil {
		log.Error("record sandbox status", "from", expected, "to", to, "err", err)
		return false
	}
	if !ok {
		log.Info("sandbox left "+string(expected)+" before this writer recorded "+string(to), "failure", msg)
	}
	return ok
}

// applyTransition is the one compare-and-set every writer uses for an
// event: it reports whether the row moved.
func (a *API) applyTransition(ctx context.Context, e events.Event) (bool, error) {
	return ApplyTransition(ctx, a.q, e)
}

// ApplyTransition records e with the compare-and-set query its target
// needs: the row must still be in e.From at e.Generation, and moving it
// increments the generation. False means it was not (someone else recorded
// e, or the sandbox has moved on since e's transition began, even if it came
// back to the same status), so the same event applied twice, or applied
// after a newer operation, changes nothing. The API's workers, the event
// consumer, agent callbacks and the host monitor all write through it.
func ApplyTransition(ctx context.Context, q *db.Queries, e events.Event) (bool, error) {
	var err error
	switch {
	case e.To == lifecycle.Running && e.Running != nil:
		_, err = q.UpdateSandboxRunningIf(ctx, runningParams(e.SandboxID, e.TeamID, e.From, e.Generation, e.Running))
	case e.To == lifecycle.Error:
		_, err = q.UpdateSandboxErrorIf(ctx, db.UpdateSandboxErrorIfParams{ID: e.SandboxID, TeamID: e.TeamID, Expected: string(e.From), Generation: e.Generation, Error: e.Error})
	case e.To == lifecycle.Stopped:
		t := e.Time
		_, err = q.UpdateSandboxStoppedIf(ctx, db.UpdateSandboxStoppedIfParams{ID: e.SandboxID, TeamID: e.TeamID, Expected: string(e.From), Generation: e.Generation, StoppedAt: &t})
	case e.To == lifecycle.Missing:
		_, err = q.UpdateSandboxMissingIf(ctx, db.UpdateSandboxMissingIfParams{ID: e.SandboxID, TeamID: e.TeamID, Expected: string(e.From), Generation: e.Generation})
	default:
		_, err = q.UpdateSandboxStatusIf(ctx, db.UpdateSandboxStatusIfParams{ID: e.SandboxID, TeamID: e.TeamID, Expected: string(e.From), Generation: e.Generation, Status: string(e.To)})
	}
	if isNoRows(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("record sandbox %s %s -> %s: %w", e.SandboxID, e.From, e.To, err)
	}
	return true, nil
}

// hostAgent returns the agent of sb's host, for synchronous calls.
func (a *API) hostAgent(ctx context.Context, sb db.Sandbox) (hostclient.Agent, error) {
	host, err := a.q.GetHost(ctx, sb.HostID)
	if err != nil {
		return nil, fmt.Errorf("get host %s: %w", sb.HostID, err)
	}
	return a.d.Agents.Agent(host.ID, host.Address)
}

// pingSandbox counts as activity, restarting the sandbox's inactivity timer.
func (a *API) pingSandbox(w http.ResponseWriter, r *http.Request) {
	sb, agent, err := a.runningSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := agent.PingSandbox(ctx, sb.ID); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// setTimeout replaces the sandbox's inactivity timeout on its host, then in
// its record, so the record never claims a timeout the host does not apply.
func (a *API) setTimeout(w http.ResponseWriter, r *http.Request) {
	var req struct {
		TimeoutSec *int `json:"timeout_sec"`
	}
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if req.TimeoutSec == nil {
		a.fail(w, r, invalid("timeout_sec", "is required"))
		return
	}
	if err := validate.Range("timeout_sec", *req.TimeoutSec, service.MinTimeoutSec, service.MaxTimeoutSec); err != nil {
		a.fail(w, r, err)
		return
	}
	sb, err := a.loadSandbox(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if st := lifecycle.Status(sb.Status); st != lifecycle.Running && st != lifecycle.Paused {
		a.fail(w, r, wrongState(sb, "the timeout can be set only on a running or paused sandbox"))
		return
	}
	agent, err := a.hostAgent(r.Context(), sb)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := agent.SetSandboxTimeout(ctx, sb.ID, uint32(*req.TimeoutSec)); err != nil {
		a.fail(w, r, err)
		return
	}
	updated, err := a.q.UpdateSandboxTimeout(ctx, db.UpdateSandboxTimeoutParams{ID: sb.ID, TeamID: sb.TeamID, TimeoutSec: int32(*req.TimeoutSec)})
	if isNoRows(err) {
		cur, lerr := a.loadSandbox(r)
		if lerr != nil {
			a.fail(w, r, lerr)
			return
		}
		a.fail(w, r, wrongState(cur, "the timeout can be set only on a running or paused sandbox"))
		return
	}
	if err != nil {
		a.fail(w, r, fmt.Errorf("record timeout: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, sandboxJSON(updated))
}

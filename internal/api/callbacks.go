package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// Types of agent-initiated sandbox events (POST /v1/hosts/sandbox-events).
const (
	hostEventAutoPaused = "auto_paused"
	hostEventDied       = "died"
	hostEventDestroyed  = "destroyed"
)

// hostEvent is the body an agent posts when it changed a sandbox by itself.
type hostEvent struct {
	EventID   string    `json:"event_id"`
	SandboxID string    `json:"sandbox_id"`
	Type      string    `json:"type"`
	Time      time.Time `json:"time"`
	Error     string    `json:"error"`
}

func (ev hostEvent) validate() error {
	if ev.EventID == "" || len(ev.EventID) > 128 {
		return invalid("event_id", "is required and at most 128 bytes")
	}
	if !id.Valid(id.Sandbox, ev.SandboxID) {
		return invalid("sandbox_id", "must be a sandbox id (sb-…), got %q", ev.SandboxID)
	}
	switch ev.Type {
	case hostEventAutoPaused, hostEventDied, hostEventDestroyed:
	default:
		return invalid("type", "must be auto_paused, died or destroyed, got %q", ev.Type)
	}
	return nil
}

// target is the status ev moves a sandbox in status cur to; ok is false
// when it changes nothing (already there, or an outcome that no longer
// applies).
func (ev hostEvent) target(cur lifecycle.Status) (to lifecycle.Status, msg string, ok bool) {
	switch ev.Type {
	case hostEventAutoPaused:
		// A user's pause may be under way; either way the host says paused.
		if cur == lifecycle.Running || cur == lifecycle.Pausing {
			return lifecycle.Paused, "", true
		}
		return "", "", false
	default:
		to = lifecycle.Stopped
		if ev.Error != "" {
			to, msg = lifecycle.Error, "the sandbox stopped unexpectedly on its host"
			if ev.Type == hostEventDestroyed {
				msg = "the host could not pause the sandbox and destroyed it"
			}
		}
		if cur.Terminal() || cur == to || !lifecycle.Allowed(cur, to) {
			return "", "", false
		}
		return to, msg, true
	}
}

// hostSandboxEvent applies an agent-initiated change. The event id is
// recorded in the same transaction as the transition, so a retried delivery
// changes nothing and a failed one can be retried.
func (a *API) hostSandboxEvent(w http.ResponseWriter, r *http.Request) {
	host, err := a.hostByToken(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ctx := r.Context()
	var ev hostEvent
	if err := decode(r, &ev); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := ev.validate(); err != nil {
		a.fail(w, r, err)
		return
	}
	if ev.Time.IsZero() {
		ev.Time = a.d.Now()
	}
	log := a.reqLog(r).With("host_id", host.ID, "sandbox_id", ev.SandboxID, "event_id", ev.EventID)

	var applied *events.Event
	duplicate := false
	err = pgx.BeginFunc(ctx, a.d.DB, func(tx pgx.Tx) error {
		q := a.q.WithTx(tx)
		sb, err := q.GetSandboxOnHost(ctx, db.GetSandboxOnHostParams{ID: ev.SandboxID, HostID: host.ID})
		if isNoRows(err) {
			return notFound("sandbox", ev.SandboxID)
		}
		if err != nil {
			return fmt.Errorf("get sandbox: %w", err)
		}
		n, err := q.RecordHostSandboxEvent(ctx, db.RecordHostSandboxEventParams{EventID: ev.EventID, HostID: host.ID, SandboxID: sb.ID})
		if err != nil {
			return fmt.Errorf("record event id: %w", err)
		}
		if n == 0 {
			duplicate = true
			return nil
		}
		// Retry when another writer moved the sandbox between the read and
		// the compare-and-set (on status and generation, so the decision is
		// never taken on a read that is out of date).
		for range 5 {
			cur := lifecycle.Status(sb.Status)
			to, msg, ok := ev.target(cur)
			if !ok {
				return nil
			}
			e := events.Event{SandboxID: sb.ID, TeamID: sb.TeamID, HostID: host.ID, From: cur, To: to, Generation: sb.Generation, Actor: "agent", Error: msg, Time: ev.Time.UTC()}
			moved, err := ApplyTransition(ctx, q, e)
			if err != nil {
				return err
			}
			if moved {
				applied = &e
				return nil
			}
			if sb, err = q.GetSandboxOnHost(ctx, db.GetSandboxOnHostParams{ID: ev.SandboxID, HostID: host.ID}); err != nil {
				return fmt.Errorf("re-read sandbox: %w", err)
			}
		}
		return errors.New("the sandbox kept changing state")
	})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	switch {
	case duplicate:
		log.Debug("agent sandbox event seen before")
	case applied != nil:
		a.publish(context.WithoutCancel(ctx), log, *applied)
		log.Info("agent sandbox event applied", "type", ev.Type, "from", applied.From, "to", applied.To, "agent_error", ev.Error)
	default:
		log.Info("agent sandbox event changes nothing", "type", ev.Type)
	}
	writeJSON(w, http.StatusOK, map[string]bool{"duplicate": duplicate, "applied": applied != nil})
}

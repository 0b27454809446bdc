package api

import (
	"context"
	"fmt"

	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// ApplyEvent is the fallback writer behind the event consumer: it records an
// outcome with the same compare-and-set the publishing writer uses, on the
// event's from-status and generation. It is idempotent and never applies a
// stale event: when the sandbox is no longer in that status at that
// generation (the writer recorded it, or a newer operation began, even one
// that came back to the same status), it changes nothing and returns nil,
// so the message is acknowledged. Only database failures return an error,
// leaving the message pending for a retry.
//
// An event without a generation, published by a version before
// generations existed, is not applied: its status alone cannot tell it from
// a stale one. Its writer recorded it before or right after publishing; if
// that writer died in between, the host monitor settles the transient
// status it left, past the grace period, from what the host reports.
func (a *API) ApplyEvent(ctx context.Context, e events.Event) error {
	log := a.log.With("sandbox_id", e.SandboxID, "team_id", e.TeamID, "host_id", e.HostID)
	if err := lifecycle.Check(e.From, e.To); err != nil {
		// Not a transition anyone can apply; retrying will not help.
		log.Warn("ignoring event with a refused transition", "err", err)
		return nil
	}
	if e.Generation == 0 {
		log.Debug("event consumer leaves an event without a generation to its writer and the host monitor", "from", e.From, "to", e.To, "actor", e.Actor)
		return nil
	}
	moved, err := ApplyTransition(ctx, a.q, e)
	if err != nil {
		return fmt.Errorf("apply event: %w", err)
	}
	if moved {
		log.Info("event consumer recorded an outcome before its writer", "from", e.From, "to", e.To, "actor", e.Actor, "generation", e.Generation)
	}
	return nil
}

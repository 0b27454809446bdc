package api

import (
	"context"
	"fmt"

	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// ApplyEvent is the fallback writer behind the event consumer: it records an
// outcome with the same compare-and-set the publishing worker uses. It is
// idempotent: when the sandbox is no longer in the event's from-status (the
// worker recorded it, or something newer happened) it changes nothing and
// returns nil, so the message is acknowledged. Only database failures return
// an error, leaving the message pending for a retry.
func (a *API) ApplyEvent(ctx context.Context, e events.Event) error {
	log := a.log.With("sandbox_id", e.SandboxID, "team_id", e.TeamID, "host_id", e.HostID)
	if err := lifecycle.Check(e.From, e.To); err != nil {
		// Not a transition anyone can apply; retrying will not help.
		log.Warn("ignoring event with a refused transition", "err", err)
		return nil
	}
	moved, err := ApplyTransition(ctx, a.q, e)
	if err != nil {
		return fmt.Errorf("apply event: %w", err)
	}
	if moved {
		log.Info("event consumer recorded an outcome before its writer", "from", e.From, "to", e.To, "actor", e.Actor)
	}
	return nil
}

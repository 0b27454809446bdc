// Package audit is the team audit log: who did what to which resource, when,
// in which request, and how it ended. The control plane's API writes an
// entry for every state-changing request; an extension records its own
// operations with Record and reads a team's log with List.
package audit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/wrenn/wrenn/pkg/db"
)

// Outcomes of an entry.
const (
	Success = "success"
	Denied  = "denied"
	Failure = "failure"
)

// Entry is one audit log record. TeamID is empty for actions taken before
// a team was known (a failed login); the actor is a user, an API key, both
// (a key acts for the user who made it) or neither (an agent, a worker).
type Entry struct {
	ID           int64     `json:"id"`
	TeamID       string    `json:"team_id"`
	ActorUserID  string    `json:"actor_user_id,omitempty"`
	ActorKeyID   string    `json:"actor_key_id,omitempty"`
	Action       string    `json:"action"`
	ResourceType string    `json:"resource_type"`
	ResourceID   string    `json:"resource_id"`
	RequestID    string    `json:"request_id"`
	Outcome      string    `json:"outcome"`
	Status       int       `json:"status"`
	CreatedAt    time.Time `json:"created_at"`
}

// OutcomeOf classifies an HTTP status: refusals of authentication or
// authorisation are denied, other errors failures.
func OutcomeOf(status int) string {
	switch {
	case status < 400:
		return Success
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return Denied
	default:
		return Failure
	}
}

// Record writes e with q, which may belong to a transaction so the entry
// commits or rolls back with the change it describes. A zero CreatedAt is
// now, a zero Status is 200, and an empty Outcome follows from Status.
func Record(ctx context.Context, q *db.Queries, e Entry) error {
	if e.Action == "" {
		return errors.New("audit: an entry needs an action")
	}
	if e.Status == 0 {
		e.Status = http.StatusOK
	}
	if e.Outcome == "" {
		e.Outcome = OutcomeOf(e.Status)
	}
	if e.CreatedAt.IsZero() {
		e.CreatedAt = time.Now()
	}
	err := q.InsertAudit(ctx, db.InsertAuditParams{
		TeamID: nonEmpty(e.TeamID), ActorUserID: nonEmpty(e.ActorUserID), ActorKeyID: nonEmpty(e.ActorKeyID),
		Action: e.Action, ResourceType: e.ResourceType, ResourceID: e.ResourceID,
		RequestID: e.RequestID, Outcome: e.Outcome, Status: int32(e.Status), CreatedAt: e.CreatedAt,
	})
	if err != nil {
		return fmt.Errorf("audit: record %s: %w", e.Action, err)
	}
	return nil
}

// MaxPage bounds one page of List.
const MaxPage = 500

// List returns up to limit entries of teamID's log, newest first, older
// than the entry with id before (0: from the newest). The id of the last
// entry of a full page is the next page's before.
func List(ctx context.Context, q *db.Queries, teamID string, before int64, limit int) ([]Entry, error) {
	if limit < 1 || limit > MaxPage {
		return nil, fmt.Errorf("audit: limit %d is outside 1..%d", limit, MaxPage)
	}
	rows, err := q.ListAudit(ctx, db.ListAuditParams{TeamID: &teamID, Before: before, MaxRows: int32(limit)})
	if err != nil {
		return nil, fmt.Errorf("audit: list: %w", err)
	}
	out := make([]Entry, len(rows))
	for i, row := range rows {
		out[i] = Entry{
			ID: row.ID, TeamID: deref(row.TeamID), ActorUserID: deref(row.ActorUserID), ActorKeyID: deref(row.ActorKeyID),
			Action: row.Action, ResourceType: row.ResourceType, ResourceID: row.ResourceID, RequestID: row.RequestID,
			Outcome: row.Outcome, Status: int(row.Status), CreatedAt: row.CreatedAt,
		}
	}
	return out, nil
}

func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

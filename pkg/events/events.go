// Package events publishes sandbox lifecycle outcomes to the Redis stream
// wrenn:events. Every outcome, success or failure, is published so a fallback
// consumer can converge the database when the writer died between an agent
// RPC and its database write, and so clients can follow status changes.
//
// Publishing is best effort for callers: a Redis failure is reported to the
// caller, which logs it and carries on, because the database (written by
// compare-and-set) is the truth and the host monitor settles what an event
// would have.
package events

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// Stream is the Redis stream every lifecycle outcome goes to.
const Stream = "wrenn:events"

// maxLen bounds the stream (approximately, so trimming stays cheap); the
// consumer keeps up far ahead of this.
const maxLen = 100_000

// Event is one lifecycle outcome: a sandbox moved (or failed to move) from
// one status to another.
type Event struct {
	SandboxID string
	TeamID    string
	HostID    string
	From      lifecycle.Status
	To        lifecycle.Status
	// Generation is the sandbox row's generation when it was in From, the
	// one the transition's compare-and-set requires (every transition
	// increments it). It is what lets the event consumer tell this
	// transition from a later visit of the same status: applied late, after
	// the sandbox moved on, the event matches no row and changes nothing.
	// Zero means unknown (an event from a version before generations), and
	// the consumer does not apply it.
	Generation int64
	// Actor says who caused it: "api:<key id>", "worker", "monitor", "agent".
	Actor string
	// Error is the user-readable failure, empty on success.
	Error string
	Time  time.Time

	// Running carries what the host reported when To is running after a
	// create, so the fallback consumer can record the same row the worker
	// would have. Nil otherwise.
	Running *RunningInfo
}

// RunningInfo is a started sandbox's host-side details.
type RunningInfo struct {
	HostIP      string
	GuestIP     string
	EnvdVersion string
	DiskMB      int64
	StartedAt   time.Time
}

// Publisher publishes events. The API depends on this interface so tests can
// record events without Redis.
type Publisher interface {
	Publish(ctx context.Context, e Event) error
}

// RedisPublisher appends events to Stream with XADD.
type RedisPublisher struct {
	client redis.UniversalClient
}

// NewRedisPublisher returns a publisher on client.
func NewRedisPublisher(client redis.UniversalClient) *RedisPublisher {
	return &RedisPublisher{client: client}
}

// Publish appends e to the stream.
func (p *RedisPublisher) Publish(ctx context.Context, e Event) error {
	err := p.client.XAdd(ctx, &redis.XAddArgs{
		Stream: Stream,
		MaxLen: maxLen,
		Approx: true,
		Values: e.Fields(),
	}).Err()
	if err != nil {
		return fmt.Errorf("publish event for sandbox %s to %s: %w", e.SandboxID, Stream, err)
	}
	return nil
}

// Fields is the event as stream fields; times are RFC 3339 with nanoseconds.
func (e Event) Fields() map[string]any {
	f := map[string]any{
		"sandbox_id": e.SandboxID,
		"team_id":    e.TeamID,
		"host_id":    e.HostID,
		"from":       string(e.From),
		"to":         string(e.To),
		"actor":      e.Actor,
		"error":      e.Error,
		"time":       e.Time.UTC().Format(time.RFC3339Nano),
	}
	if e.Generation != 0 {
		f["generation"] = strconv.FormatInt(e.Generation, 10)
	}
	if r := e.Running; r != nil {
		f["host_ip"] = r.HostIP
		f["guest_ip"] = r.GuestIP
		f["envd_version"] = r.EnvdVersion
		f["disk_mb"] = strconv.FormatInt(r.DiskMB, 10)
		f["started_at"] = r.StartedAt.UTC().Format(time.RFC3339Nano)
	}
	return f
}

// Decode reads an event back from stream fields, as a consumer receives them.
func Decode(values map[string]any) (Event, error) {
	get := func(k string) string {
		s, _ := values[k].(string)
		return s
	}
	e := Event{
		SandboxID: get("sandbox_id"),
		TeamID:    get("team_id"),
		HostID:    get("host_id"),
		From:      lifecycle.Status(get("from")),
		To:        lifecycle.Status(get("to")),
		Actor:     get("actor"),
		Error:     get("error"),
	}
	if e.SandboxID == "" {
		return Event{}, fmt.Errorf("event has no sandbox_id")
	}
	if !e.To.Valid() {
		return Event{}, fmt.Errorf("event for %s has unknown target status %s", e.SandboxID, strconv.Quote(string(e.To)))
	}
	t, err := time.Parse(time.RFC3339Nano, get("time"))
	if err != nil {
		return Event{}, fmt.Errorf("event for %s: time: %w", e.SandboxID, err)
	}
	e.Time = t
	// Absent in events published before generations existed: zero.
	if g, ok := values["generation"].(string); ok {
		n, err := strconv.ParseInt(g, 10, 64)
		if err != nil || n < 1 {
			return Event{}, fmt.Errorf("event for %s: generation %s is not a positive integer", e.SandboxID, strconv.Quote(g))
		}
		e.Generation = n
	}
	if sa, ok := values["started_at"].(string); ok {
		started, err := time.Parse(time.RFC3339Nano, sa)
		if err != nil {
			return Event{}, fmt.Errorf("event for %s: started_at: %w", e.SandboxID, err)
		}
		disk, err := strconv.ParseInt(get("disk_mb"), 10, 64)
		if err != nil {
			return Event{}, fmt.Errorf("event for %s: disk_mb: %w", e.SandboxID, err)
		}
		e.Running = &RunningInfo{HostIP: get("host_ip"), GuestIP: get("guest_ip"), EnvdVersion: get("envd_version"), DiskMB: disk, StartedAt: started}
	}
	return e, nil
}

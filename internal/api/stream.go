package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wrenn/wrenn/pkg/events"
)

// streamIDPattern is a Redis stream id, the SSE event id clients send back
// in Last-Event-ID.
var streamIDPattern = regexp.MustCompile(`^[0-9]{1,20}-[0-9]{1,20}$`)

// StatusChange is one SSE message of GET /v1/events (event: status).
type StatusChange struct {
	SandboxID string    `json:"sandbox_id"`
	From      string    `json:"from"`
	To        string    `json:"to"`
	Actor     string    `json:"actor"`
	Error     string    `json:"error,omitempty"`
	Time      time.Time `json:"time"`
}

// streamBlock bounds one XREAD, and so how long a handler takes to notice a
// gone client or shutdown (a blocked read is not interrupted by
// cancellation).
const streamBlock = 5 * time.Second

// CloseStreams ends every event stream, so HTTP shutdown does not wait out
// clients that would never hang up by themselves.
func (a *API) CloseStreams() { a.streamsCancel() }

// eventStream is GET /v1/events: the caller team's status changes as
// server-sent events, read from wrenn:events from now on, or after
// Last-Event-ID when a client reconnects.
func (a *API) eventStream(w http.ResponseWriter, r *http.Request) {
	if a.d.Redis == nil {
		a.fail(w, r, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "the event stream is not available on this control plane"})
		return
	}
	team := principal(r).TeamID
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(a.streams, cancel)
	defer stop()

	start := r.Header.Get("Last-Event-ID")
	if start != "" && !streamIDPattern.MatchString(start) {
		a.fail(w, r, invalid("Last-Event-ID", "must be an event id this stream sent, got %q", start))
		return
	}
	if start == "" {
		// "$" would skip whatever arrives between two reads, so start
		// after the stream's current last entry instead.
		last, err := a.d.Redis.XRevRangeN(ctx, events.Stream, "+", "-", 1).Result()
		if err != nil {
			a.fail(w, r, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "the event stream is unavailable; try again shortly", Cause: err})
			return
		}
		start = "0-0"
		if len(last) == 1 {
			start = last[0].ID
		}
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write := func(s string) bool {
		if _, err := fmt.Fprint(w, s); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write(": connected\n\n") {
		return
	}
	keepalive := a.d.StreamKeepalive
	lastWrite := time.Now()
	block := min(streamBlock, keepalive)
	for ctx.Err() == nil {
		res, err := a.d.Redis.XRead(ctx, &redis.XReadArgs{Streams: []string{events.Stream, start}, Count: 100, Block: block}).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			if ctx.Err() != nil {
				return
			}
			a.reqLog(r).Warn("read events for a stream", "err", err)
			sleep(ctx, time.Second)
		}
		for _, s := range res {
			for _, m := range s.Messages {
				start = m.ID
				e, derr := events.Decode(m.Values)
				if derr != nil || e.TeamID != team {
					continue
				}
				// An outcome is published just before its writer records
				// it; a client acting on the event at once must not read
				// the status before it. The same idempotent compare-and-set
				// as the writer's and the consumer's: a no-op once either
				// has recorded it, or for a stale event.
				if e.Generation > 0 {
					if _, err := a.applyTransition(ctx, e); err != nil && ctx.Err() == nil {
						a.reqLog(r).Warn("record event before streaming it", "sandbox_id", e.SandboxID, "err", err)
					}
				}
				data, _ := json.Marshal(StatusChange{SandboxID: e.SandboxID, From: string(e.From), To: string(e.To), Actor: e.Actor, Error: e.Error, Time: e.Time})
				if !write("id: " + m.ID + "\nevent: status\ndata: " + string(data) + "\n\n") {
					return
				}
				lastWrite = time.Now()
			}
		}
		if time.Since(lastWrite) >= keepalive {
			if !write(": keepalive\n\n") {
				return
			}
			lastWrite = time.Now()
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultGroup is the consumer group every control-plane replica joins; each
// replica is one consumer in it.
const DefaultGroup = "wrenn-cp"

// Handler applies one event. It must be idempotent: a message is delivered
// again when a handler failed or its consumer died before acknowledging.
// A nil error acknowledges the message; an error leaves it pending, to be
// claimed again after ConsumerOptions.MinIdle.
type Handler func(ctx context.Context, e Event) error

// ConsumerOptions configures a Consumer.
type ConsumerOptions struct {
	// Group defaults to DefaultGroup.
	Group string
	// Name identifies this replica in the group; it must be unique among
	// live replicas (cpserver uses host name, pid and a random suffix).
	Name string
	// MinIdle is how long a message stays pending with a consumer (dead or
	// failing) before another claims it with XAUTOCLAIM; default 60 s.
	MinIdle time.Duration
	// Block is how long one read waits for new messages; default 2 s. It
	// bounds how long Run takes to notice cancellation.
	Block  time.Duration
	Logger *slog.Logger
	// Hooks run, in order, after the handler applied an event (extensions'
	// SandboxEventHook). The first error leaves the message pending, so the
	// handler and every hook see it again: hooks must be idempotent.
	Hooks []Handler
	// OnLag, when set, is told after every read how far this consumer is
	// behind the stream head: the age of the newest message it just
	// handled (the time since it was appended), or 0 when a read found
	// nothing new. Claimed messages do not count: they are retries, not
	// the live stream.
	OnLag func(time.Duration)
}

// Consumer reads Stream in a consumer group and hands each event to a
// Handler: the fallback writer that converges the database when a writer
// died after publishing an outcome but before recording it.
type Consumer struct {
	client  redis.UniversalClient
	handle  Handler
	o       ConsumerOptions
	claimAt time.Time
}

// NewConsumer returns a consumer; Run starts it.
func NewConsumer(client redis.UniversalClient, handle Handler, o ConsumerOptions) *Consumer {
	if o.Group == "" {
		o.Group = DefaultGroup
	}
	if o.MinIdle == 0 {
		o.MinIdle = time.Minute
	}
	if o.Block == 0 {
		o.Block = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Consumer{client: client, handle: handle, o: o}
}

// Run consumes until ctx ends and returns nil then. Redis errors are logged
// and retried with a pause, so a Redis outage delays the fallback but does
// not stop it.
func (c *Consumer) Run(ctx context.Context) error {
	if c.o.Name == "" {
		return errors.New("event consumer needs a name")
	}
	for ctx.Err() == nil {
		if err := c.ensureGroup(ctx); err != nil {
			c.o.Logger.Warn("create event consumer group", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		break
	}
	for ctx.Err() == nil {
		if _, err := c.Step(ctx); err != nil && ctx.Err() == nil {
			c.o.Logger.Warn("consume events", "err", err)
			// A Redis that restarted without persistence lost the group:
			// recreate it, or the consumer would fail forever.
			if isNoGroup(err) {
				if gerr := c.ensureGroup(ctx); gerr != nil {
					c.o.Logger.Warn("recreate event consumer group", "err", gerr)
				}
			}
			sleep(ctx, time.Second)
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// ensureGroup creates the group at the stream's end (history before the
// first replica existed needs no fallback) unless it exists.
func (c *Consumer) ensureGroup(ctx context.Context) error {
	err := c.client.XGroupCreateMkStream(ctx, Stream, c.o.Group, "$").Err()
	if err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
		return fmt.Errorf("create consumer group %s on %s: %w", c.o.Group, Stream, err)
	}
	return nil
}

// Step claims messages that stayed pending past MinIdle (at most every
// MinIdle/2), then reads and handles new ones. It returns how many messages
// it acknowledged.
func (c *Consumer) Step(ctx context.Context) (int, error) {
	acked := 0
	if now := time.Now(); now.After(c.claimAt) {
		c.claimAt = now.Add(c.o.MinIdle / 2)
		n, err := c.claim(ctx)
		acked += n
		if err != nil {
			return acked, err
		}
	}
	res, err := c.client.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: c.o.Group, Consumer: c.o.Name, Streams: []string{Stream, ">"}, Count: 100, Block: c.o.Block,
	}).Result()
	if errors.Is(err, redis.Nil) {
		c.lag(0)
		return acked, nil
	}
	if err != nil {
		return acked, fmt.Errorf("read %s as %s: %w", Stream, c.o.Name, err)
	}
	for _, s := range res {
		acked += c.process(ctx, s.Messages)
		if n := len(s.Messages); n > 0 {
			if at, ok := messageTime(s.Messages[n-1].ID); ok {
				c.lag(max(time.Since(at), 0))
			}
		}
	}
	return acked, nil
}

// claim takes over every message idle past MinIdle, including this
// consumer's own failures, and handles them.
func (c *Consumer) claim(ctx context.Context) (int, error) {
	acked, start := 0, "0-0"
	for {
		msgs, next, err := c.client.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream: Stream, Group: c.o.Group, Consumer: c.o.Name, MinIdle: c.o.MinIdle, Start: start, Count: 100,
		}).Result()
		if err != nil {
			return acked, fmt.Errorf("claim idle events: %w", err)
		}
		acked += c.process(ctx, msgs)
		if next == "0-0" || len(msgs) == 0 {
			return acked, nil
		}
		start = next
	}
}

func (c *Consumer) process(ctx context.Context, msgs []redis.XMessage) int {
	acked := 0
	for _, m := range msgs {
		e, err := Decode(m.Values)
		if err != nil {
			// A message no version can read would be retried forever.
			c.o.Logger.Error("dropping malformed event", "id", m.ID, "err", err)
		} else if err := c.handle(ctx, e); err != nil {
			c.o.Logger.Warn("event handler failed; the event stays pending", "id", m.ID, "sandbox_id", e.SandboxID, "err", err)
			continue
		} else if err := c.runHooks(ctx, e); err != nil {
			c.o.Logger.Warn("event hook failed; the event stays pending", "id", m.ID, "sandbox_id", e.SandboxID, "err", err)
			continue
		}
		if err := c.client.XAck(ctx, Stream, c.o.Group, m.ID).Err(); err != nil {
			c.o.Logger.Warn("acknowledge event", "id", m.ID, "err", err)
			continue
		}
		acked++
	}
	return acked
}

func (c *Consumer) runHooks(ctx context.Context, e Event) error {
	for i, h := range c.o.Hooks {
		if err := h(ctx, e); err != nil {
			return fmt.Errorf("event hook %d: %w", i, err)
		}
	}
	return nil
}

func (c *Consumer) lag(d time.Duration) {
	if c.o.OnLag != nil {
		c.o.OnLag(d)
	}
}

// messageTime is when Redis appended a message: the first part of an
// auto-generated stream id is its Unix time in milliseconds.
func messageTime(id string) (time.Time, bool) {
	ms, _, ok := strings.Cut(id, "-")
	if !ok {
		return time.Time{}, false
	}
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(n), true
}

// isNoGroup reports whether err, however wrapped, is Redis saying the
// consumer group does not exist.
func isNoGroup(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "NOGROUP")
}

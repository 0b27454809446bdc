package events

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wrenn/wrenn/internal/testenv"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

func client(t *testing.T) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(testenv.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

type recorder struct {
	mu   sync.Mutex
	seen []string
	fail map[string]bool // sandbox ids whose handling fails
}

func (r *recorder) handle(_ context.Context, e Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail[e.SandboxID] {
		return errors.New("scripted failure")
	}
	r.seen = append(r.seen, e.SandboxID)
	return nil
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seen...)
}

func pending(t *testing.T, c *redis.Client) int64 {
	t.Helper()
	p, err := c.XPending(context.Background(), Stream, DefaultGroup).Result()
	if err != nil {
		t.Fatal(err)
	}
	return p.Count
}

func ev(sid string) Event {
	return Event{SandboxID: sid, TeamID: "team-a", From: lifecycle.Starting, To: lifecycle.Running, Actor: "worker", Time: time.Now(),
		Running: &RunningInfo{HostIP: "10.0.0.1", GuestIP: "10.0.0.2", EnvdVersion: "1", DiskMB: 5, StartedAt: time.Unix(1700000000, 0).UTC()}}
}

func TestConsumerHandlesAndAcks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := client(t)
	rec := &recorder{}
	cons := NewConsumer(c, rec.handle, ConsumerOptions{Name: "a", Block: 50 * time.Millisecond})
	if err := cons.ensureGroup(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cons.ensureGroup(ctx); err != nil {
		t.Fatalf("second ensureGroup: %v", err)
	}
	p := NewRedisPublisher(c)
	for _, sid := range []string{"sb-1", "sb-2", "sb-3"} {
		if err := p.Publish(ctx, ev(sid)); err != nil {
			t.Fatal(err)
		}
	}
	// A message no one can decode is dropped, not retried forever.
	if err := c.XAdd(ctx, &redis.XAddArgs{Stream: Stream, Values: map[string]any{"junk": "1"}}).Err(); err != nil {
		t.Fatal(err)
	}
	n, err := cons.Step(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Errorf("acked %d, want 4", n)
	}
	if got := rec.got(); len(got) != 3 || got[0] != "sb-1" || got[2] != "sb-3" {
		t.Errorf("handled %v", got)
	}
	if p := pending(t, c); p != 0 {
		t.Errorf("%d pending", p)
	}
}

// A consumer whose handler fails (or that died) leaves the message pending;
// after MinIdle another consumer claims it with XAUTOCLAIM and applies it.
func TestConsumerClaimsIdleMessages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := client(t)
	failing := &recorder{fail: map[string]bool{"sb-x": true}}
	a := NewConsumer(c, failing.handle, ConsumerOptions{Name: "a", Block: 20 * time.Millisecond, MinIdle: 100 * time.Millisecond})
	if err := a.ensureGroup(ctx); err != nil {
		t.Fatal(err)
	}
	if err := NewRedisPublisher(c).Publish(ctx, ev("sb-x")); err != nil {
		t.Fatal(err)
	}
	if n, err := a.Step(ctx); err != nil || n != 0 {
		t.Fatalf("failing step acked %d, %v", n, err)
	}
	if p := pending(t, c); p != 1 {
		t.Fatalf("%d pending, want 1", p)
	}
	healthy := &recorder{}
	b := NewConsumer(c, healthy.handle, ConsumerOptions{Name: "b", Block: 20 * time.Millisecond, MinIdle: 100 * time.Millisecond})
	// Not idle long enough yet: b must not take it.
	if n, _ := b.Step(ctx); n != 0 {
		t.Fatalf("claimed a message that was not idle")
	}
	time.Sleep(150 * time.Millisecond)
	b.claimAt = time.Time{}
	n, err := b.Step(ctx)
	if err != nil || n != 1 {
		t.Fatalf("claim step acked %d, %v", n, err)
	}
	if got := healthy.got(); len(got) != 1 || got[0] != "sb-x" {
		t.Errorf("b handled %v", got)
	}
	if p := pending(t, c); p != 0 {
		t.Errorf("%d pending after claim", p)
	}
}

func TestConsumerRunStopsOnCancel(t *testing.T) {
	t.Parallel()
	c := client(t)
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- NewConsumer(c, rec.handle, ConsumerOptions{Name: "a", Block: 50 * time.Millisecond}).Run(ctx)
	}()
	// The group exists once Run started; publish until it is seen.
	deadline := time.Now().Add(5 * time.Second)
	for len(rec.got()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("Run never handled an event")
		}
		_ = NewRedisPublisher(c).Publish(context.Background(), ev("sb-run"))
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

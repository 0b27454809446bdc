package events

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// countingHook counts calls per sandbox and fails while failing is set.
type countingHook struct {
	mu      sync.Mutex
	calls   map[string]int
	failing bool
}

func (h *countingHook) hook(_ context.Context, e Event) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.calls == nil {
		h.calls = map[string]int{}
	}
	h.calls[e.SandboxID]++
	if h.failing {
		return errors.New("scripted hook failure")
	}
	return nil
}

func (h *countingHook) count(sid string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls[sid]
}

func (h *countingHook) setFailing(v bool) {
	h.mu.Lock()
	h.failing = v
	h.mu.Unlock()
}

// Every hook sees every event exactly once when all succeed, after the
// handler, and the consumer reports its lag behind the stream head.
func TestConsumerHooksOncePerEvent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := client(t)
	rec := &recorder{}
	h1, h2 := &countingHook{}, &countingHook{}
	var mu sync.Mutex
	var lags []time.Duration
	cons := NewConsumer(c, rec.handle, ConsumerOptions{
		Name: "a", Block: 20 * time.Millisecond, Hooks: []Handler{h1.hook, h2.hook},
		OnLag: func(d time.Duration) { mu.Lock(); lags = append(lags, d); mu.Unlock() },
	})
	if err := cons.ensureGroup(ctx); err != nil {
		t.Fatal(err)
	}
	sids := []string{"sb-h1", "sb-h2", "sb-h3"}
	for _, sid := range sids {
		if err := NewRedisPublisher(c).Publish(ctx, ev(sid)); err != nil {
			t.Fatal(err)
		}
	}
	// The messages are at least this old when read.
	time.Sleep(30 * time.Millisecond)
	if n, err := cons.Step(ctx); err != nil || n != 3 {
		t.Fatalf("step acked %d, %v", n, err)
	}
	if n, err := cons.Step(ctx); err != nil || n != 0 {
		t.Fatalf("idle step acked %d, %v", n, err)
	}
	for _, sid := range sids {
		if h1.count(sid) != 1 || h2.count(sid) != 1 {
			t.Errorf("%s: hooks called %d and %d times, want 1", sid, h1.count(sid), h2.count(sid))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(lags) != 2 {
		t.Fatalf("lag reported %d times, want 2: %v", len(lags), lags)
	}
	if lags[0] < 25*time.Millisecond || lags[0] > 10*time.Second {
		t.Errorf("lag after reading 30 ms old messages is %v", lags[0])
	}
	if lags[1] != 0 {
		t.Errorf("lag after an empty read is %v, want 0", lags[1])
	}
}

// A failing hook leaves the message pending even though the handler
// succeeded; once the hook recovers, the claimed message reaches it again
// and is acknowledged.
func TestConsumerFailingHookRedelivers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := client(t)
	rec := &recorder{}
	h := &countingHook{failing: true}
	cons := NewConsumer(c, rec.handle, ConsumerOptions{Name: "a", Block: 20 * time.Millisecond, MinIdle: 50 * time.Millisecond, Hooks: []Handler{h.hook}})
	if err := cons.ensureGroup(ctx); err != nil {
		t.Fatal(err)
	}
	if err := NewRedisPublisher(c).Publish(ctx, ev("sb-hook")); err != nil {
		t.Fatal(err)
	}
	if n, err := cons.Step(ctx); err != nil || n != 0 {
		t.Fatalf("step with a failing hook acked %d, %v", n, err)
	}
	if p := pending(t, c); p != 1 {
		t.Fatalf("%d pending after a failing hook, want 1", p)
	}
	h.setFailing(false)
	time.Sleep(80 * time.Millisecond)
	cons.claimAt = time.Time{}
	if n, err := cons.Step(ctx); err != nil || n != 1 {
		t.Fatalf("claim step acked %d, %v", n, err)
	}
	if p := pending(t, c); p != 0 {
		t.Errorf("%d pending after the hook recovered", p)
	}
	if got := h.count("sb-hook"); got != 2 {
		t.Errorf("hook called %d times, want 2 (failed, then claimed)", got)
	}
	// The handler is idempotent and sees the redelivery too.
	if got := rec.got(); len(got) != 2 {
		t.Errorf("handler saw %v, want the event twice", got)
	}
}

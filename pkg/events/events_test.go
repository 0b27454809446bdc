package events

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/wrenn/wrenn/internal/testenv"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

func TestPublishToRealRedis(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	opts, err := redis.ParseURL(testenv.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	defer c.Close()
	p := NewRedisPublisher(c)
	want := []Event{
		{SandboxID: "sb-1", TeamID: "team-a", HostID: "host-1", From: lifecycle.Starting, To: lifecycle.Running, Generation: 7, Actor: "worker", Time: time.Unix(1700000000, 5).UTC()},
		// As published before events carried a generation: decoded as 0.
		{SandboxID: "sb-2", TeamID: "team-a", HostID: "host-1", From: lifecycle.Starting, To: lifecycle.Error, Actor: "worker", Error: "boot failed", Time: time.Unix(1700000001, 0).UTC()},
	}
	for _, e := range want {
		if err := p.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	msgs, err := c.XRange(ctx, Stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != len(want) {
		t.Fatalf("stream has %d messages, want %d", len(msgs), len(want))
	}
	for i, m := range msgs {
		got, err := Decode(m.Values)
		if err != nil {
			t.Fatal(err)
		}
		if got != want[i] {
			t.Errorf("message %d = %+v, want %+v", i, got, want[i])
		}
	}
}

func TestPublishFailsWhenRedisIsDown(t *testing.T) {
	t.Parallel()
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	err := NewRedisPublisher(c).Publish(context.Background(), Event{SandboxID: "sb-1", To: lifecycle.Running, Time: time.Now()})
	if err == nil {
		t.Fatal("publish to a closed port succeeded")
	}
}

func TestDecodeRejects(t *testing.T) {
	t.Parallel()
	good := Event{SandboxID: "sb-1", To: lifecycle.Running, Time: time.Now()}.Fields()
	tests := map[string]func(map[string]any){
		"no sandbox":     func(m map[string]any) { delete(m, "sandbox_id") },
		"unknown status": func(m map[string]any) { m["to"] = "flying" },
		"bad time":       func(m map[string]any) { m["time"] = "yesterday" },
		"bad generation": func(m map[string]any) { m["generation"] = "seven" },
		"generation 0":   func(m map[string]any) { m["generation"] = "0" },
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m := map[string]any{}
			for k, v := range good {
				m[k] = v
			}
			mutate(m)
			if _, err := Decode(m); err == nil {
				t.Fatal("Decode accepted it")
			}
		})
	}
}

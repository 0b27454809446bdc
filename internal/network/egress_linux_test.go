package network

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestFirewallAllowAll(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	run := &fakeRunner{}
	cfg, err := Config{CIDR: mustCIDR(t, "10.88.0.0/16"), Runner: run}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	fw := newFirewall(cfg)
	if err := fw.install(ctx); err != nil {
		t.Fatal(err)
	}
	a, b, c := cfg.linkFor("sb-a", 0, true), cfg.linkFor("sb-b", 7, true), cfg.linkFor("sb-c", 9, true)
	if err := fw.allow(ctx, a); err != nil {
		t.Fatal(err)
	}
	run.calls = nil
	// sb-a has its rule already: only b and c are added, in one restore.
	if err := fw.allowAll(ctx, []*Link{a, b, c}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`-i wv0 -s 10.88.0.2/32 -m comment --comment wrenn:sb-a -j ACCEPT`,
		`-i wv7 -s 10.88.0.30/32 -m comment --comment wrenn:sb-b -j ACCEPT`,
		`-i wv9 -s 10.88.0.38/32 -m comment --comment wrenn:sb-c -j ACCEPT`,
	}
	if got := run.rules("filter WRENN-EGRESS"); !reflect.DeepEqual(got, want) {
		t.Fatalf("egress = %q, want %q", got, want)
	}
	if got := restores(run); got != 1 {
		t.Errorf("%d iptables-restore runs for one batch, want 1 (calls %q)", got, run.calls)
	}
	// All present: nothing is restored, and the rules are not doubled.
	run.calls = nil
	if err := fw.allowAll(ctx, []*Link{a, b, c}); err != nil {
		t.Fatal(err)
	}
	if got := restores(run); got != 0 {
		t.Errorf("%d iptables-restore runs with every rule present, want 0", got)
	}
	if got := run.rules("filter WRENN-EGRESS"); !reflect.DeepEqual(got, want) {
		t.Fatalf("egress after a second allowAll = %q, want %q", got, want)
	}
}

func restores(run *fakeRunner) int {
	run.mu.Lock()
	defer run.mu.Unlock()
	n := 0
	for _, c := range run.calls {
		if strings.HasPrefix(c, "iptables-restore") {
			n++
		}
	}
	return n
}

// gatedRunner holds the first command until open is closed, so a test can
// queue requests behind a flush in progress; it fails every command that
// mentions bad (a rule iptables refuses).
type gatedRunner struct {
	*fakeRunner
	open  chan struct{}
	first sync.Once
	bad   string
}

func (g *gatedRunner) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	g.first.Do(func() { <-g.open })
	if g.bad != "" && (strings.Contains(string(stdin), g.bad) || slices.Contains(args, "wrenn:"+g.bad)) {
		return nil, errors.New("refused")
	}
	return g.fakeRunner.Run(ctx, stdin, name, args...)
}

func TestEgressQueue(t *testing.T) {
	t.Parallel()
	const n = 20
	for _, tt := range []struct {
		name string
		bad  int // index of a request iptables refuses, or -1
	}{
		{"batches concurrent setups", -1},
		{"a refused rule fails only its sandbox", 13},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			run := &fakeRunner{}
			gate := &gatedRunner{fakeRunner: run, open: make(chan struct{})}
			if tt.bad >= 0 {
				gate.bad = fmt.Sprintf("sb-%02d", tt.bad)
			}
			cfg, err := Config{CIDR: mustCIDR(t, "10.88.0.0/16"), Runner: gate}.normalize()
			if err != nil {
				t.Fatal(err)
			}
			m := &Manager{cfg: cfg, log: cfg.Logger, fw: newFirewall(cfg), slots: map[int]string{}}
			// The first request's flush holds at its first command; the
			// others queue behind it.
			first := m.requestEgress(cfg.linkFor("sb-first", 100, true))
			waitFor(t, "the first flush to take its request", func() bool {
				m.egress.mu.Lock()
				defer m.egress.mu.Unlock()
				return len(m.egress.pending) == 0
			})
			waits := make([]func() error, n)
			for i := range n {
				waits[i] = m.requestEgress(cfg.linkFor(fmt.Sprintf("sb-%02d", i), i, true))
			}
			if _, err := m.fw.run.(*gatedRunner).fakeRunner.Run(ctx, nil, "iptables", "-w", "-t", "filter", "-N", m.fw.chainEg); err != nil {
				t.Fatal(err)
			}
			close(gate.open)
			if err := first(); err != nil {
				t.Fatalf("first: %v", err)
			}
			for i, wait := range waits {
				err := wait()
				if again := wait(); again != err {
					t.Errorf("sb-%02d: second wait %v, first %v", i, again, err)
				}
				if i == tt.bad {
					if err == nil {
						t.Errorf("sb-%02d: refused rule reported success", i)
					}
					continue
				}
				if err != nil {
					t.Errorf("sb-%02d: %v", i, err)
				}
			}
			got := run.rules("filter WRENN-EGRESS")
			want := n + 1
			if tt.bad >= 0 {
				want--
			}
			if len(got) != want {
				t.Errorf("%d egress rules, want %d: %q", len(got), want, got)
			}
			for i := range n {
				has := slices.ContainsFunc(got, func(r string) bool { return strings.Contains(r, fmt.Sprintf("wrenn:sb-%02d ", i)) })
				if has == (i == tt.bad) {
					t.Errorf("sb-%02d: rule present %v", i, has)
				}
			}
			if tt.bad < 0 {
				// One flush for the first, one for the twenty queued
				// behind it.
				if got := restores(run); got != 2 {
					t.Errorf("%d iptables-restore runs, want 2 (calls %q)", got, run.calls)
				}
			}
			// The flusher stops once it finds the queue empty.
			waitFor(t, "the queue to drain", func() bool {
				m.egress.mu.Lock()
				defer m.egress.mu.Unlock()
				return !m.egress.busy && len(m.egress.pending) == 0
			})
		})
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// EgressReady given up by its caller leaves the wait for Teardown, which
// must not revoke before the rule is in (it would land after the revoke).
func TestEgressReadyCancelledThenTeardownWaits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	run := &fakeRunner{}
	gate := &gatedRunner{fakeRunner: run, open: make(chan struct{})}
	cfg, err := Config{CIDR: mustCIDR(t, "10.88.0.0/16"), Runner: gate}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, fw: newFirewall(cfg), slots: map[int]string{}}
	if _, err := run.Run(ctx, nil, "iptables", "-w", "-t", "filter", "-N", m.fw.chainEg); err != nil {
		t.Fatal(err)
	}
	l := cfg.linkFor("sb-slow", 3, true)
	m.putEgressWait(l.SandboxID, m.requestEgress(l))
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := m.EgressReady(short, l); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("EgressReady with a held flush: %v, want the deadline", err)
	}
	close(gate.open)
	// What Teardown does before it revokes.
	if wait := m.takeEgressWait(l.SandboxID); wait == nil {
		t.Fatal("the cancelled wait was dropped")
	} else if err := wait(); err != nil {
		t.Fatal(err)
	}
	if got := run.rules("filter WRENN-EGRESS"); len(got) != 1 || !strings.Contains(got[0], "wrenn:sb-slow") {
		t.Fatalf("egress = %q, want the rule of sb-slow", got)
	}
	// Nothing left to wait for: ready at once.
	if err := m.EgressReady(ctx, l); err != nil {
		t.Fatal(err)
	}
	if err := m.EgressReady(ctx, cfg.linkFor("sb-offline", 4, false)); err != nil {
		t.Fatal(err)
	}
}

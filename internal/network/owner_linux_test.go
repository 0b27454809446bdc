package network

import (
	"context"
	"errors"
	"slices"
	"testing"
)

// Two agents on one host, each with its own tagged names and range: one's
// start-up cleanup and its removal of its chains leave the other's
// namespace, veth and rules alone, and a third cannot start on a range in
// use.
func TestManagersWithOwnNamesShareAHost(t *testing.T) {
	t.Parallel()
	envA := testEnv{"wtown-aaaaa", "qoaaaaa", "10.213.1.0/24"}
	envB := testEnv{"wtown-bbbbb", "qobbbbb", "10.213.2.0/24"}
	a, b := newTestManager(t, envA), newTestManager(t, envB)
	ctx := context.Background()
	setup(t, a, "sb-owna", true)
	lb := setup(t, b, "sb-ownb", true)
	fwB, leftB := firewallState(t, envB), leftovers(t, envB)
	if len(leftB) != 3 {
		t.Fatalf("B has %v, want its netns, veth and pin", leftB)
	}

	// A restarted A keeping nothing: its own sandbox goes, B's stays.
	restarted := &Manager{cfg: a.cfg, log: a.log, fw: a.fw, slots: map[int]string{}}
	if err := restarted.CleanupOrphans(ctx, nil); err != nil {
		t.Fatalf("A's cleanup: %v", err)
	}
	if got := leftovers(t, envA); len(got) != 0 {
		t.Errorf("A's cleanup left %v of its own", got)
	}
	if got := leftovers(t, envB); !slices.Equal(got, leftB) {
		t.Errorf("A's cleanup changed B's objects: %v, had %v", got, leftB)
	}
	if got := firewallState(t, envB); !slices.Equal(got, fwB) {
		t.Errorf("A's cleanup changed B's rules:\n%v\nhad\n%v", got, fwB)
	}

	// A range that B's veth uses is refused by name.
	_, err := New(ctx, Config{CIDR: mustCIDR(t, envB.cidr), Prefix: "wtown-ccccc", IfPrefix: "qoccccc"})
	if !errors.Is(err, ErrConflict) {
		t.Errorf("New on B's range: %v, want ErrConflict", err)
	}

	// B's chains stay while it has a sandbox, and go with the last one.
	if err := b.RemoveGuard(ctx); !errors.Is(err, ErrConflict) {
		t.Errorf("RemoveGuard with a sandbox up: %v, want ErrConflict", err)
	}
	if err := b.Teardown(ctx, lb); err != nil {
		t.Fatal(err)
	}
	if err := b.RemoveGuard(ctx); err != nil {
		t.Fatalf("RemoveGuard: %v", err)
	}
	if got := firewallState(t, envB); len(got) != 0 {
		t.Errorf("B's rules after RemoveGuard: %v", got)
	}
	// The test's cleanup runs B's orphan cleanup, which needs the chains.
	if err := b.fw.install(ctx); err != nil {
		t.Fatal(err)
	}
}

package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/envdclient"
	"github.com/wrenn/wrenn/internal/runtime"
)

func TestCreateFailureReleasesWhatWasTakenInReverse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		failAt string
		// released is what the failed create must give back, in order.
		released []string
	}{
		// The root filesystem and the network are taken at the same
		// time: whichever failed, the other is given back.
		{"rootfs.prepare", []string{"network.teardown"}},
		{"network.setup", []string{"rootfs.release"}},
		{"runtime.create", []string{"network.teardown", "rootfs.release"}},
		{"network.egress", []string{"runtime.destroy", "network.teardown", "rootfs.release"}},
		{"envd.init", []string{"runtime.destroy", "network.teardown", "rootfs.release"}},
	}
	for _, tt := range tests {
		t.Run(tt.failAt, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, nil)
			r.fail.set(tt.failAt, errInjected)
			sid := newID()
			if _, err := r.m.Create(context.Background(), createReq(sid, 0)); err == nil {
				t.Fatal("create succeeded despite the injected failure")
			}
			var released []string
			for _, e := range r.j.since(0) {
				var op, id string
				fmt.Sscan(e, &op, &id)
				if id != sid {
					t.Fatalf("journal entry %q names another sandbox", e)
				}
				if op == "rootfs.release" || op == "network.teardown" || op == "runtime.destroy" {
					released = append(released, op)
				}
			}
			if !slices.Equal(released, tt.released) {
				t.Errorf("released %v, want %v (journal %v)", released, tt.released, r.j.since(0))
			}
			r.assertEmpty(t)
			if _, err := r.m.Get(sid); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get after failed create: %v, want ErrNotFound", err)
			}
			// The id is usable again once the cause is gone.
			r.fail.set(tt.failAt, nil)
			if _, err := r.m.Create(context.Background(), createReq(sid, 0)); err != nil {
				t.Fatalf("create after the failure cleared: %v", err)
			}
			if err := r.m.Destroy(context.Background(), sid); err != nil {
				t.Fatal(err)
			}
			r.assertEmpty(t)
		})
	}
}

func TestCreateIsIdempotentAndDestroyReleasesOnce(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	ctx := context.Background()
	sid := newID()
	first, err := r.m.Create(ctx, createReq(sid, 0))
	if err != nil {
		t.Fatal(err)
	}
	n := r.j.len()
	again, err := r.m.Create(ctx, createReq(sid, 0))
	if err != nil {
		t.Fatalf("duplicate create: %v", err)
	}
	if again != first || r.j.len() != n {
		t.Errorf("duplicate create took resources or made a new sandbox: %v", r.j.since(n))
	}
	if err := r.m.Destroy(ctx, sid); err != nil {
		t.Fatal(err)
	}
	want := []string{"runtime.destroy " + sid, "network.teardown " + sid, "rootfs.release " + sid}
	if got := r.j.since(n); !slices.Equal(got, want) {
		t.Errorf("destroy released %v, want %v", got, want)
	}
	if err := r.m.Destroy(ctx, sid); !errors.Is(err, ErrNotFound) {
		t.Errorf("second destroy: %v, want ErrNotFound", err)
	}
	r.assertEmpty(t)
}

func TestCreateRejectsBadInput(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	tests := []struct {
		name string
		req  CreateRequest
	}{
		{"bad id", CreateRequest{ID: "sandbox-1", Template: "minimal", Limits: Limits{VCPUs: 1, MemoryMB: 128}}},
		{"unknown template", CreateRequest{ID: newID(), Template: "nope", Limits: Limits{VCPUs: 1, MemoryMB: 128}}},
		{"no vcpus", CreateRequest{ID: newID(), Template: "minimal", Limits: Limits{MemoryMB: 128}}},
		{"tiny memory", CreateRequest{ID: newID(), Template: "minimal", Limits: Limits{VCPUs: 1, MemoryMB: 1}}},
		{"bad env", CreateRequest{ID: newID(), Template: "minimal", Limits: Limits{VCPUs: 1, MemoryMB: 128}, Env: map[string]string{"A=B": "c"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := r.m.Create(context.Background(), tt.req); !errors.Is(err, ErrInvalid) {
				t.Errorf("Create: %v, want ErrInvalid", err)
			}
		})
	}
	r.assertEmpty(t)
}

func TestPauseResumeStates(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	ctx := context.Background()
	sid := newID()
	sb, err := r.m.Create(ctx, createReq(sid, 0))
	if err != nil {
		t.Fatal(err)
	}
	exec := func() error {
		_, err := r.m.Exec(ctx, sid, envdclient.ExecRequest{Cmd: "echo", Args: []string{"hi"}, Timeout: 5 * time.Second})
		return err
	}
	if err := exec(); err != nil {
		t.Fatalf("exec on running: %v", err)
	}
	if _, err := r.m.Resume(ctx, sid); !errors.Is(err, ErrConflict) {
		t.Errorf("resume of running: %v, want ErrConflict", err)
	}
	snap, err := r.m.Pause(ctx, sid)
	if err != nil || snap.State != StatePaused {
		t.Fatalf("pause: %v, state %s", err, snap.State)
	}
	if st, _ := r.rt.state(sid); st != runtime.StatePaused {
		t.Errorf("runtime says %s after pause", st)
	}
	if rec := readRecord(t, r.dir, sid); rec.State != StatePaused {
		t.Errorf("persisted state %s after pause, want paused", rec.State)
	}
	if _, err := r.m.Pause(ctx, sid); !errors.Is(err, ErrConflict) {
		t.Errorf("pause of paused: %v, want ErrConflict", err)
	}
	if err := exec(); !errors.Is(err, ErrConflict) {
		t.Errorf("exec on paused: %v, want ErrConflict", err)
	}
	inits := r.envd.initCount(sb.Link.GuestIP)
	if _, err := r.m.Resume(ctx, sid); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if got := r.envd.initCount(sb.Link.GuestIP); got != inits+1 {
		t.Errorf("envd got %d /init calls on resume, want exactly 1", got-inits)
	}
	if rec := readRecord(t, r.dir, sid); rec.State != StateRunning {
		t.Errorf("persisted state %s after resume, want running", rec.State)
	}
	if err := exec(); err != nil {
		t.Errorf("exec after resume: %v", err)
	}
	for name, err := range map[string]error{
		"pause":  func() error { _, err := r.m.Pause(ctx, "sb-unknown"); return err }(),
		"resume": func() error { _, err := r.m.Resume(ctx, "sb-unknown"); return err }(),
		"ping":   r.m.Ping("sb-unknown"),
		"exec":   func() error { _, err := r.m.Exec(ctx, "sb-unknown", envdclient.ExecRequest{Cmd: "x"}); return err }(),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s of unknown id: %v, want ErrNotFound", name, err)
		}
	}
	// A paused sandbox is destroyed like a running one.
	if _, err := r.m.Pause(ctx, sid); err != nil {
		t.Fatal(err)
	}
	if err := r.m.Destroy(ctx, sid); err != nil {
		t.Fatal(err)
	}
	r.assertEmpty(t)
}

func TestResumeFailureKeepsSandboxPaused(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	ctx := context.Background()
	sid := newID()
	if _, err := r.m.Create(ctx, createReq(sid, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Pause(ctx, sid); err != nil {
		t.Fatal(err)
	}
	r.fail.set("runtime.resume", errInjected)
	if _, err := r.m.Resume(ctx, sid); !errors.Is(err, errInjected) {
		t.Fatalf("resume: %v, want the runtime's error", err)
	}
	if sb, _ := r.m.Get(sid); sb.snapshot().State != StatePaused {
		t.Errorf("state %s after failed resume, want paused", sb.snapshot().State)
	}
	r.fail.set("runtime.resume", nil)
	if _, err := r.m.Resume(ctx, sid); err != nil {
		t.Fatalf("resume once the runtime works: %v", err)
	}
	if err := r.m.Destroy(ctx, sid); err != nil {
		t.Fatal(err)
	}
	r.assertEmpty(t)
}

// record is the part of a persisted sandbox record the tests look at.
type record struct {
	State   State         `json:"state"`
	Timeout time.Duration `json:"timeout"`
}

func readRecord(t *testing.T, dir, sid string) record {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, sid, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	var sb record
	if err := json.Unmarshal(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sb
}

// TestConcurrentOperationsNeverLeaveHalfState hammers one id with every
// operation at once. Whatever interleaving happens, each call ends in
// success or a classified error, the runtime never sees two operations on
// the id at once, and the fakes always agree with the table.
func TestConcurrentOperationsNeverLeaveHalfState(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	r.rt.delay = 200 * time.Microsecond // long enough to interleave
	ctx := context.Background()
	sid := newID()
	ops := []func() error{
		func() error { _, err := r.m.Create(ctx, createReq(sid, 0)); return err },
		func() error { return r.m.Destroy(ctx, sid) },
		func() error { _, err := r.m.Pause(ctx, sid); return err },
		func() error { _, err := r.m.Resume(ctx, sid); return err },
		func() error {
			_, err := r.m.Exec(ctx, sid, envdclient.ExecRequest{Cmd: "true", Timeout: 5 * time.Second})
			return err
		},
		func() error { return r.m.Ping(sid) },
		func() error { return r.m.SetTimeout(sid, 0) },
		func() error { _, err := r.m.Get(sid); return err },
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var unexpected []error
	for w := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for range 60 {
				err := ops[rng.IntN(len(ops))]()
				if err != nil && !errors.Is(err, ErrConflict) && !errors.Is(err, ErrNotFound) {
					mu.Lock()
					unexpected = append(unexpected, err)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	for _, err := range unexpected {
		t.Errorf("unclassified error: %v", err)
	}
	if r.rt.overlaps != 0 {
		t.Errorf("the runtime saw %d overlapping operations on one id", r.rt.overlaps)
	}
	// The table and the fakes agree.
	rtState, inRuntime := r.rt.state(sid)
	sb, err := r.m.Get(sid)
	switch {
	case err == nil:
		snap := sb.snapshot()
		want := map[State]runtime.State{StateRunning: runtime.StateRunning, StatePaused: runtime.StatePaused}[snap.State]
		if !inRuntime || rtState != want || r.net.count() != 1 || r.img.count() != 1 {
			t.Errorf("table says %s, runtime %q (present %v), networks %d, rootfs %d",
				snap.State, rtState, inRuntime, r.net.count(), r.img.count())
		}
		if err := r.m.Destroy(ctx, sid); err != nil {
			t.Fatal(err)
		}
	case errors.Is(err, ErrNotFound):
	default:
		t.Fatal(err)
	}
	r.assertEmpty(t)
}

func TestRecoverReadoptsRunningAndPausedAndDropsOrphans(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	ctx := context.Background()
	running, paused, dead := newID(), newID(), newID()
	for _, sid := range []string{running, paused, dead} {
		if _, err := r.m.Create(ctx, createReq(sid, 0)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.m.Pause(ctx, paused); err != nil {
		t.Fatal(err)
	}
	r.rt.kill(dead)

	// A new manager over the same directory and host: the old one was
	// killed without any cleanup.
	m2, err := NewManager(r.opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Recover(ctx); err != nil {
		t.Fatalf("recover: %v", err)
	}
	r.m = m2
	got := map[string]State{}
	for _, s := range m2.List() {
		got[s.ID] = s.State
	}
	want := map[string]State{running: StateRunning, paused: StatePaused}
	if len(got) != len(want) || got[running] != StateRunning || got[paused] != StatePaused {
		t.Errorf("re-adopted %v, want %v", got, want)
	}
	if _, ok := r.rt.state(dead); ok || r.net.count() != 2 || r.img.count() != 2 {
		t.Errorf("the dead sandbox was not cleaned up: runtime has it %v, networks %d, rootfs %d", ok, r.net.count(), r.img.count())
	}
	if _, err := m2.Exec(ctx, running, envdclient.ExecRequest{Cmd: "true", Timeout: 5 * time.Second}); err != nil {
		t.Errorf("exec on re-adopted sandbox: %v", err)
	}
	if _, err := m2.Resume(ctx, paused); err != nil {
		t.Errorf("resume of re-adopted paused sandbox: %v", err)
	}
	if err := m2.DestroyAll(ctx); err != nil {
		t.Fatal(err)
	}
	r.assertEmpty(t)
}

// Package runtimetest is the conformance suite every runtime.Runtime driver
// runs: lifecycle (create, pause, resume, destroy), resource limits, failure
// cleanup, idempotence and concurrency, against a real runtime. A driver's
// own test calls Run with a constructor; the suite builds busybox root
// filesystems whose init scripts report through files the test reads from
// the host, since exec into a sandbox is envd's job, not the runtime's.
package runtimetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn/wrenn/internal/runtime"
)

// Harness is what the suite needs from a driver's test.
type Harness struct {
	// New returns the runtime under test. It is called once per subtest;
	// returning the same driver each time is fine.
	New func(t *testing.T) runtime.Runtime
	// RootFS returns a fresh root filesystem directory with a busybox
	// userland. Defaults to BusyboxRootFS.
	RootFS func(t *testing.T) string
	// Leftovers lists what the runtime still holds for id (state
	// directories, cgroups, ...) so the suite can require nothing after
	// Destroy or a failed Create. Optional.
	Leftovers func(id string) []string
	// GVisor says the sandboxes run on gVisor's user-space kernel (runsc).
	// The suite then adapts the few checks where that kernel legitimately
	// behaves differently from the host's; each adaptation says why.
	GVisor bool
	// HostPids is the most host tasks Stats may report for a sandbox whose
	// Spec.Pids is pids: the limit the driver gives the sandbox's host
	// cgroup, which for runsc also holds the Sentry's, gofer's and ptrace
	// stubs' tasks. Defaults to pids itself (runc, whose cgroup holds only
	// the sandbox's processes).
	HostPids func(pids int64) int64
}

// Run runs the suite. It needs whatever the runtime needs (root, usually);
// the caller skips before calling when that is missing.
func Run(t *testing.T, h Harness) {
	if h.RootFS == nil {
		h.RootFS = func(t *testing.T) string { return BusyboxRootFS(t) }
	}
	if h.HostPids == nil {
		h.HostPids = func(pids int64) int64 { return pids }
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, h Harness)
	}{
		{"Lifecycle", testLifecycle},
		{"DestroyPaused", testDestroyPaused},
		{"DestroyIdempotent", testDestroyIdempotent},
		{"CreateFailureLeavesNothing", testCreateFailure},
		{"MemoryLimit", testMemoryLimit},
		{"PidsLimit", testPidsLimit},
		{"CPUQuota", testCPUQuota},
		{"Concurrent", testConcurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, h) })
	}
}

// sandbox is one sandbox under test.
type sandbox struct {
	spec   runtime.Spec
	rt     runtime.Runtime
	marker string // env var every process of the sandbox inherits
	gvisor bool   // Harness.GVisor
}

// newSandbox prepares a spec running script as the init under /bin/sh. The
// sandbox is destroyed when t ends, before its directories are removed.
func newSandbox(t *testing.T, h Harness, rt runtime.Runtime, script string, mod func(*runtime.Spec)) *sandbox {
	t.Helper()
	id := "sb-rt-" + randomHex(t, 6)
	rootfs := h.RootFS(t)
	stateDir := t.TempDir()
	netns := NetNS(t)
	marker := "WRENN_RUNTIMETEST=" + id
	s := &sandbox{
		rt:     rt,
		marker: marker,
		gvisor: h.GVisor,
		spec: runtime.Spec{
			ID:        id,
			StateDir:  stateDir,
			RootFS:    rootfs,
			NetNSPath: netns,
			Hostname:  "rt-test",
			Args:      []string{"/bin/sh", "-c", script},
			Env:       []string{"PATH=/bin", marker},
			VCPUs:     1,
			MemoryMB:  128,
			Pids:      128,
		},
	}
	if mod != nil {
		mod(&s.spec)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := rt.Destroy(ctx, id); err != nil {
			t.Errorf("cleanup: Destroy %s: %v", id, err)
		}
	})
	return s
}

func (s *sandbox) create(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.rt.Create(ctx, s.spec); err != nil {
		t.Fatalf("Create %s: %v", s.spec.ID, err)
	}
}

// file reads a file the init wrote, "" if it does not exist yet.
func (s *sandbox) file(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.spec.RootFS, name))
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return strings.TrimSpace(string(b))
}

// counter reads /counter, -1 when absent.
func (s *sandbox) counter(t *testing.T) int {
	t.Helper()
	return s.intFile(t, "counter")
}

// intFile reads an integer file the init rewrites atomically (write, then
// rename), -1 when absent.
func (s *sandbox) intFile(t *testing.T, name string) int {
	t.Helper()
	v := s.file(t, name)
	if v == "" {
		return -1
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s %q: %v", name, v, err)
	}
	return n
}

func (s *sandbox) state(t *testing.T) (runtime.State, error) {
	t.Helper()
	return s.rt.State(context.Background(), s.spec.ID)
}

func (s *sandbox) requireState(t *testing.T, want runtime.State) {
	t.Helper()
	got, err := s.state(t)
	if err != nil || got != want {
		t.Fatalf("State = %q, %v; want %q", got, err, want)
	}
}

// processes returns the host pids of the sandbox: those carrying its marker
// in their environment, i.e. every process the sandbox started, whatever
// namespace it is in.
//
// gVisor adaptation: a gVisor sandbox's processes live inside the Sentry
// and are not host processes (their environment is not in any host
// /proc/<pid>/environ), so the marker finds nothing. Its host processes are
// the Sentry, the gofer and the ptrace stubs: every one sits in a cgroup
// named after the sandbox id or names the id or the bundle (StateDir) on its
// command line. The test looks for both, which finds strictly more than
// the cgroup alone would (a process that escaped the cgroup still names
// its sandbox).
func (s *sandbox) processes(t *testing.T) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	want := []byte(s.marker)
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if s.gvisor {
			if s.gvisorProcess(e.Name()) {
				pids = append(pids, pid)
			}
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue // gone, or a kernel thread
		}
		if slices.ContainsFunc(bytes.Split(env, []byte{0}), func(kv []byte) bool { return bytes.Equal(kv, want) }) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// gvisorProcess reports whether host process pid belongs to the gVisor
// sandbox: in a cgroup named after its id, or naming the id or the bundle
// directory in its argv. Zombies count: they still hold a pid.
func (s *sandbox) gvisorProcess(pid string) bool {
	if cg, err := os.ReadFile(filepath.Join("/proc", pid, "cgroup")); err == nil {
		for _, line := range strings.Split(string(cg), "\n") {
			if strings.HasSuffix(line, "/"+s.spec.ID) || strings.Contains(line, "/"+s.spec.ID+"/") {
				return true
			}
		}
	}
	argv, err := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
	if err != nil {
		return false
	}
	for _, arg := range bytes.Split(argv, []byte{0}) {
		a := string(arg)
		if a == s.spec.ID || strings.HasSuffix(a, s.spec.StateDir) || strings.Contains(a, s.spec.StateDir+"/") {
			return true
		}
	}
	return false
}

// requireGone checks that nothing of the sandbox is left anywhere the suite
// or the driver can see.
func (s *sandbox) requireGone(t *testing.T, h Harness) {
	t.Helper()
	ctx := context.Background()
	if _, err := s.rt.State(ctx, s.spec.ID); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("State after destroy: %v, want ErrNotFound", err)
	}
	if _, err := s.rt.Stats(ctx, s.spec.ID); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Stats after destroy: %v, want ErrNotFound", err)
	}
	ids, err := s.rt.List(ctx)
	if err != nil {
		t.Errorf("List: %v", err)
	}
	if slices.Contains(ids, s.spec.ID) {
		t.Errorf("List still has %s", s.spec.ID)
	}
	if pids := s.processes(t); len(pids) > 0 {
		t.Errorf("processes of %s still alive: %v", s.spec.ID, pids)
	}
	if h.Leftovers != nil {
		if left := h.Leftovers(s.spec.ID); len(left) > 0 {
			t.Errorf("runtime still holds for %s: %v", s.spec.ID, left)
		}
	}
}

// eventually polls cond every 20 ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// counterScript writes an increasing counter to /counter every 100 ms,
// atomically (write then rename), after leaving a marker file.
const counterScript = `echo before-pause > /marker
i=0
while true; do
	i=$((i+1))
	echo $i > /counter.tmp && mv /counter.tmp /counter
	sleep 0.1
done`

func testLifecycle(t *testing.T, h Harness) {
	rt := h.New(t)
	ctx := context.Background()
	s := newSandbox(t, h, rt, counterScript, nil)
	s.create(t)

	// The init runs.
	s.requireState(t, runtime.StateRunning)
	eventually(t, 5*time.Second, "the counter to reach 3", func() bool { return s.counter(t) >= 3 })
	if ids, err := rt.List(ctx); err != nil || !slices.Contains(ids, s.spec.ID) {
		t.Fatalf("List = %v, %v; want it to include %s", ids, err, s.spec.ID)
	}
	st, err := rt.Stats(ctx, s.spec.ID)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	if st.Pids < 1 || st.MemoryBytes == 0 || st.CPUUsage <= 0 {
		t.Fatalf("Stats of a running sandbox = %+v, want pids, memory and CPU time", st)
	}
	if len(s.processes(t)) == 0 {
		t.Fatal("no host process carries the sandbox's marker")
	}

	// Pause: the counter stops.
	if err := rt.Pause(ctx, s.spec.ID); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	s.requireState(t, runtime.StatePaused)
	frozen := s.counter(t)
	time.Sleep(600 * time.Millisecond)
	if now := s.counter(t); now != frozen {
		t.Fatalf("counter advanced while paused: %d → %d", frozen, now)
	}

	// Resume: it continues from where it was, not from where it would be.
	if err := rt.Resume(ctx, s.spec.ID); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	s.requireState(t, runtime.StateRunning)
	var first int
	eventually(t, 5*time.Second, "the counter to move after resume", func() bool {
		first = s.counter(t)
		return first > frozen
	})
	if first > frozen+2 {
		t.Fatalf("first value after resume %d, want %d or %d (the counter ran while paused)", first, frozen+1, frozen+2)
	}
	if got := s.file(t, "marker"); got != "before-pause" {
		t.Fatalf("file written before pause reads %q after resume", got)
	}

	// Destroy: nothing left, and the counter stops for good.
	if err := rt.Destroy(ctx, s.spec.ID); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	s.requireGone(t, h)
	last := s.counter(t)
	time.Sleep(300 * time.Millisecond)
	if now := s.counter(t); now != last {
		t.Fatalf("counter advanced after destroy: %d → %d", last, now)
	}
}

func testDestroyPaused(t *testing.T, h Harness) {
	rt := h.New(t)
	ctx := context.Background()
	s := newSandbox(t, h, rt, counterScript, nil)
	s.create(t)
	eventually(t, 5*time.Second, "the counter to start", func() bool { return s.counter(t) >= 1 })
	if err := rt.Pause(ctx, s.spec.ID); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if err := rt.Destroy(ctx, s.spec.ID); err != nil {
		t.Fatalf("Destroy of a paused sandbox: %v", err)
	}
	s.requireGone(t, h)
}

func testDestroyIdempotent(t *testing.T, h Harness) {
	rt := h.New(t)
	ctx := context.Background()
	if err := rt.Destroy(ctx, "sb-rt-never-created"); err != nil {
		t.Fatalf("Destroy of an unknown id: %v", err)
	}
	s := newSandbox(t, h, rt, counterScript, nil)
	s.create(t)
	for i := 0; i < 3; i++ {
		if err := rt.Destroy(ctx, s.spec.ID); err != nil {
			t.Fatalf("Destroy #%d: %v", i+1, err)
		}
	}
	s.requireGone(t, h)
	for name, op := range map[string]func() error{
		"Pause":  func() error { return rt.Pause(ctx, s.spec.ID) },
		"Resume": func() error { return rt.Resume(ctx, s.spec.ID) },
	} {
		if err := op(); !errors.Is(err, runtime.ErrNotFound) {
			t.Errorf("%s after destroy: %v, want ErrNotFound", name, err)
		}
	}
}

func testCreateFailure(t *testing.T, h Harness) {
	tests := []struct {
		name string
		mod  func(t *testing.T, s *runtime.Spec)
	}{
		{"missing rootfs", func(t *testing.T, s *runtime.Spec) { s.RootFS = filepath.Join(t.TempDir(), "absent") }},
		{"empty rootfs", func(t *testing.T, s *runtime.Spec) { s.RootFS = t.TempDir() }},
		{"init not found", func(t *testing.T, s *runtime.Spec) { s.Args = []string{"/bin/no-such-init"} }},
		{"missing netns", func(t *testing.T, s *runtime.Spec) { s.NetNSPath = "/var/run/netns/wrenn-rt-absent" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := h.New(t)
			s := newSandbox(t, h, rt, counterScript, func(s *runtime.Spec) { tt.mod(t, s) })
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := rt.Create(ctx, s.spec); err == nil {
				t.Fatal("Create succeeded")
			}
			s.requireGone(t, h)
		})
	}
}

func testMemoryLimit(t *testing.T, h Harness) {
	rt := h.New(t)
	// dd's buffer is bs bytes, all touched by the read from /dev/zero: 8 MiB
	// fits in 48 MiB. awk then doubles a string until the limit stops it,
	// growing its memory a page at a time as a program that outgrows its
	// sandbox does; it must be OOM-killed inside while the init, which
	// reports the outcome and keeps a heartbeat, lives on. The small result
	// is reported before the big allocation starts.
	script := `dd if=/dev/zero of=/dev/null bs=8M count=1 2>/dev/null; echo "small=$?" > /small.tmp; mv /small.tmp /small
awk 'BEGIN { s = "x"; while (1) s = s s }'; echo "big=$?" > /mem.tmp
mv /mem.tmp /mem
i=0
while true; do i=$((i+1)); echo $i > /beat.tmp; mv /beat.tmp /beat; sleep 0.1; done`
	s := newSandbox(t, h, rt, script, func(s *runtime.Spec) { s.MemoryMB = 48 })
	s.create(t)
	eventually(t, 20*time.Second, "the small allocation to report", func() bool { return s.file(t, "small") != "" })
	if got := s.file(t, "small"); got != "small=0" {
		t.Fatalf("allocation within the limit reported %q, want small=0", got)
	}
	eventually(t, 20*time.Second, "the memory test to report", func() bool {
		if st, err := s.state(t); err == nil && st != runtime.StateRunning {
			t.Fatalf("sandbox is %s: the allocation over the limit took the whole sandbox down", st)
		}
		return s.file(t, "mem") != ""
	})
	// 137 = 128 + SIGKILL, the OOM killer's signal.
	if got := s.file(t, "mem"); got != "big=137" {
		t.Fatalf("allocation over the limit reported %q, want big=137 (OOM-killed)", got)
	}
	eventually(t, 5*time.Second, "the init's heartbeat after the OOM kill", func() bool { return s.intFile(t, "beat") >= 5 })
	s.requireState(t, runtime.StateRunning)
}

func testPidsLimit(t *testing.T, h Harness) {
	rt := h.New(t)
	const limit = 64
	// A fork bomb: every instance leaves a sleeper behind, forks two more
	// instances, waits, and forks again. The shell exits an instance whose
	// fork fails ("can't fork", which the bomb's stderr collects in
	// /bomb.err), so the sleepers keep the sandbox filled after the bomb
	// has burnt out at the limit. The init never forks after starting it:
	// it counts the sandbox's processes with a glob over /proc and writes
	// the highest count and a heartbeat, all shell builtins, so it must
	// survive and keep reporting.
	script := `mkfifo /idle
exec 3<>/idle
bomb() { sleep 1000 & while true; do bomb & bomb & wait; done; }
bomb 2>/bomb.err &
echo started > /bomb
peak=0; beat=0
while true; do
	set -- /proc/[0-9]*
	[ $# -gt $peak ] && peak=$#
	beat=$((beat+1))
	echo "$peak $beat" > /pids
	read -t 0.005 x <&3
done`
	s := newSandbox(t, h, rt, script, func(s *runtime.Spec) { s.Pids = limit })
	s.create(t)
	ctx := context.Background()
	// The host side: Stats counts every task in the sandbox's host cgroup,
	// the runtime's own included, and must never pass the limit the driver
	// gave it.
	hostLimit := uint64(h.HostPids(limit))
	var hostPeak uint64
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		st, err := rt.Stats(ctx, s.spec.ID)
		if err != nil {
			t.Fatalf("Stats: %v", err)
		}
		hostPeak = max(hostPeak, st.Pids)
		time.Sleep(2 * time.Millisecond)
	}
	if s.file(t, "bomb") != "started" {
		t.Fatal("init did not get past starting the bomb")
	}
	peak, beat := s.pidsReport(t)
	t.Logf("fork bomb peaked at %d processes inside under a limit of %d; %d host tasks under a host limit of %d",
		peak, limit, hostPeak, hostLimit)
	if hostPeak > hostLimit {
		t.Fatalf("sandbox reached %d host tasks, its host limit is %d", hostPeak, hostLimit)
	}
	if peak > limit {
		t.Fatalf("fork bomb reached %d processes, limit %d", peak, limit)
	}
	// The limit is what stopped the bomb: its forks failed (EAGAIN), and
	// not at some much lower count.
	if !strings.Contains(s.file(t, "bomb.err"), "can't fork") {
		t.Fatalf("no fork of the bomb failed (stderr %q): the test did not reach the limit", s.file(t, "bomb.err"))
	}
	if peak < limit/2 {
		t.Fatalf("fork bomb peaked at %d processes, far below the limit %d", peak, limit)
	}
	// The sandbox lives on with the bomb still pressing: the init keeps
	// its heartbeat going.
	eventually(t, 5*time.Second, "the init's heartbeat to go on beside the bomb", func() bool {
		_, now := s.pidsReport(t)
		return now > beat+10
	})
	s.requireState(t, runtime.StateRunning)
	if err := rt.Destroy(ctx, s.spec.ID); err != nil {
		t.Fatalf("Destroy of a fork-bombed sandbox: %v", err)
	}
	s.requireGone(t, h)
}

// pidsReport reads the pids test's "<peak> <heartbeat>" line. The init
// rewrites it in place every 20 ms, so a read can catch it empty or half
// written: it retries until the line parses.
func (s *sandbox) pidsReport(t *testing.T) (peak, beat int) {
	t.Helper()
	var err error
	for try := 0; try < 100; try++ {
		f := strings.Fields(s.file(t, "pids"))
		if len(f) == 2 {
			if peak, err = strconv.Atoi(f[0]); err == nil {
				if beat, err = strconv.Atoi(f[1]); err == nil {
					return peak, beat
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("init's pids report %q does not parse: %v", s.file(t, "pids"), err)
	return 0, 0
}

func testCPUQuota(t *testing.T, h Harness) {
	rt := h.New(t)
	// Two busy loops against a one-core quota: unlimited they would take
	// both cores of a two-core host.
	script := `busy() { while true; do :; done; }
busy & busy &
echo started > /cpu
wait`
	s := newSandbox(t, h, rt, script, func(s *runtime.Spec) { s.VCPUs = 1 })
	s.create(t)
	eventually(t, 5*time.Second, "the busy loops to start", func() bool { return s.file(t, "cpu") != "" })
	ctx := context.Background()
	time.Sleep(300 * time.Millisecond)
	before, err := rt.Stats(ctx, s.spec.ID)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	time.Sleep(2 * time.Second)
	after, err := rt.Stats(ctx, s.spec.ID)
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Since(start)
	cores := float64(after.CPUUsage-before.CPUUsage) / float64(wall)
	t.Logf("busy loops used %.2f cores under a 1-core quota", cores)
	// Generous bounds: the machine is shared, so the loops may get less
	// than their quota, but never much more.
	if cores > 1.25 {
		t.Fatalf("sandbox used %.2f cores, quota is 1", cores)
	}
	if cores < 0.2 {
		t.Fatalf("sandbox used %.2f cores: the busy loops did not run", cores)
	}
}

func testConcurrent(t *testing.T, h Harness) {
	rt := h.New(t)
	const n = 5
	boxes := make([]*sandbox, n)
	for i := range boxes {
		boxes[i] = newSandbox(t, h, rt, counterScript, nil)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	parallel := func(op func(*sandbox) error) []error {
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, b := range boxes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = op(b)
			}()
		}
		wg.Wait()
		return errs
	}
	for i, err := range parallel(func(b *sandbox) error { return rt.Create(ctx, b.spec) }) {
		if err != nil {
			t.Fatalf("Create #%d: %v", i, err)
		}
	}
	for _, b := range boxes {
		eventually(t, 10*time.Second, fmt.Sprintf("%s's counter", b.spec.ID), func() bool { return b.counter(t) >= 1 })
	}
	ids, err := rt.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range boxes {
		if !slices.Contains(ids, b.spec.ID) {
			t.Errorf("List lacks %s", b.spec.ID)
		}
	}
	for i, err := range parallel(func(b *sandbox) error { return rt.Destroy(ctx, b.spec.ID) }) {
		if err != nil {
			t.Errorf("Destroy #%d: %v", i, err)
		}
	}
	for _, b := range boxes {
		b.requireGone(t, h)
	}
}

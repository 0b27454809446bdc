package process

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func newManager(t *testing.T, opts Options) *Manager {
	t.Helper()
	m := NewManager(slog.New(slog.DiscardHandler), opts)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if n := len(m.List()); n != 0 {
			t.Errorf("%d processes tracked after shutdown", n)
		}
	})
	return m
}

func shell(script string) Spec {
	return Spec{Cmd: "/bin/sh", Args: []string{"-c", script}, Env: []string{"PATH=/usr/bin:/bin"}, Dir: "/"}
}

// drain reads a subscription to its end.
func drain(t *testing.T, s *Subscription) (stdout []byte, end *End) {
	t.Helper()
	var out bytes.Buffer
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev, ok := <-s.Events():
			if !ok {
				if end == nil {
					t.Fatal("channel closed without an end event")
				}
				return out.Bytes(), end
			}
			if ev.End != nil {
				end = ev.End
			} else if ev.Stream == Stdout {
				out.Write(ev.Data)
			}
		case <-timeout:
			t.Fatal("no end event")
		}
	}
}

func TestUnwatchedProcessDoesNotBlock(t *testing.T) {
	t.Parallel()
	m := newManager(t, Options{})
	// 10 MB with nobody listening: output is discarded, the process ends.
	p, sub, err := m.Start(shell("head -c 10000000 /dev/zero; echo done"))
	if err != nil {
		t.Fatal(err)
	}
	sub.Close()
	select {
	case <-p.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("process without subscribers blocked")
	}
	// After the end it is untracked, and a late subscriber gets just the end.
	if _, err := m.ByPID(p.PID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ByPID after end: %v", err)
	}
	out, end := drain(t, p.Subscribe())
	if len(out) != 0 || end.ExitCode != 0 || !end.Exited {
		t.Fatalf("late subscriber got %d bytes, end %+v", len(out), end)
	}
}

func TestSlowSubscriberLosesNothing(t *testing.T) {
	t.Parallel()
	m := newManager(t, Options{Buffer: 2})
	p, sub, err := m.Start(shell("i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	fast := p.Subscribe()
	defer fast.Close()
	time.Sleep(200 * time.Millisecond) // let the buffers fill and the writer block
	// Both read concurrently: a subscriber that reads nothing holds the
	// process back (back-pressure), by design.
	fastDone := make(chan []byte, 1)
	go func() {
		var out bytes.Buffer
		for ev := range fast.Events() {
			out.Write(ev.Data)
		}
		fastDone <- out.Bytes()
	}()
	slowOut, _ := drain(t, sub)
	fastOut := <-fastDone
	var want bytes.Buffer
	for i := range 2000 {
		want.WriteString("line")
		want.WriteString(itoa(i))
		want.WriteByte('\n')
	}
	// The second subscriber came after the start, so it may miss a prefix,
	// never a byte in between.
	if !bytes.Equal(slowOut, want.Bytes()) || !bytes.HasSuffix(want.Bytes(), fastOut) {
		t.Fatalf("slow got %d bytes, fast %d, want %d", len(slowOut), len(fastOut), want.Len())
	}
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

func TestDescendantHoldingOutputDoesNotDelayEndForever(t *testing.T) {
	t.Parallel()
	m := newManager(t, Options{DrainGrace: 300 * time.Millisecond})
	start := time.Now()
	p, sub, err := m.Start(shell("sleep 30 & echo started"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	out, end := drain(t, sub)
	if string(out) != "started\n" || end.ExitCode != 0 {
		t.Fatalf("out %q end %+v", out, end)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("end event took %v with a background child holding stdout", d)
	}
	// The background sleep is in the process's group; clean it up.
	_ = syscall.Kill(-p.PID, syscall.SIGKILL)
}

func TestTagIsFreedAfterExit(t *testing.T) {
	t.Parallel()
	m := newManager(t, Options{})
	spec := shell("exit 0")
	spec.Tag = "reuse"
	for range 3 {
		p, sub, err := m.Start(spec)
		if err != nil {
			t.Fatalf("Start with a freed tag: %v", err)
		}
		drain(t, sub)
		<-p.Done()
		if _, err := m.ByTag("reuse"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("tag still held: %v", err)
		}
	}
}

func TestShutdownRefusesNewProcesses(t *testing.T) {
	t.Parallel()
	m := NewManager(slog.New(slog.DiscardHandler), Options{})
	p, sub, err := m.Start(shell("sleep 30"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, end := drain(t, sub); end.Status != "signal: killed" {
		t.Fatalf("end %+v", end)
	}
	if err := syscall.Kill(p.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("process %d survives shutdown: %v", p.PID, err)
	}
	if _, _, err := m.Start(shell("true")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after shutdown: %v", err)
	}
}

// Not parallel: it counts the test process's file descriptors.
func TestStartFailuresReleaseFiles(t *testing.T) {
	m := newManager(t, Options{})
	before := openFDs(t)
	for _, spec := range []Spec{
		{Cmd: "", Dir: "/"},
		{Cmd: "/no/such", Dir: "/"},
		{Cmd: "/bin/sh", Dir: "/no/such/dir"},
		{Cmd: "/etc/passwd", Dir: "/"},
		{Cmd: "/bin/true", Dir: "/", PTY: &Size{Cols: 80, Rows: 24}, Cred: &Credential{UID: 0, GID: 0, Groups: []uint32{0}}, Env: []string{"PATH=/bin"}},
	} {
		if p, sub, err := m.Start(spec); err == nil {
			drain(t, sub)
			<-p.Done()
		}
	}
	// A process with stdin ends when stdin is closed; its pipes go with it.
	_, sub, err := m.Start(Spec{Cmd: "/bin/sh", Dir: "/", Stdin: true, Tag: "x"})
	if err != nil {
		t.Fatalf("valid start: %v", err)
	}
	sub.Close()
	p, err := m.ByTag("x")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	if after := openFDs(t); after > before {
		t.Fatalf("%d file descriptors open, %d before", after, before)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(entries)
}

func TestChildOOMScoreAdj(t *testing.T) {
	t.Parallel()
	adj := 100
	m := newManager(t, Options{OOMScoreAdj: &adj})
	// The value is written right after the start; the shell waits a moment
	// and reads it through a child, which inherits it.
	_, sub, err := m.Start(shell("sleep 0.3; cat /proc/self/oom_score_adj"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if out, _ := drain(t, sub); string(out) != "100\n" {
		t.Fatalf("child oom_score_adj = %q, want 100", out)
	}
}

// recordingCgroup remembers which pids were added, failing when told to.
type recordingCgroup struct {
	mu   sync.Mutex
	pids []int
	err  error
}

func (c *recordingCgroup) Add(pid int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pids = append(c.pids, pid)
	return c.err
}

func TestStartedProcessesJoinTheCgroup(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
	}{
		{name: "added"},
		// A read-only cgroupfs (a runc sandbox) must not stop processes.
		{name: "add fails", err: syscall.EROFS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cg := &recordingCgroup{err: tt.err}
			m := newManager(t, Options{Cgroup: cg})
			pty := shell("exit 0")
			pty.PTY = &Size{Cols: 80, Rows: 24}
			var want []int
			for _, spec := range []Spec{shell("exit 0"), pty} {
				p, sub, err := m.Start(spec)
				if err != nil {
					t.Fatalf("Start: %v", err)
				}
				want = append(want, p.PID)
				_, end := drain(t, sub)
				sub.Close()
				if end.ExitCode != 0 {
					t.Errorf("process %d exited %d, want 0", p.PID, end.ExitCode)
				}
			}
			cg.mu.Lock()
			defer cg.mu.Unlock()
			if !slices.Equal(cg.pids, want) {
				t.Errorf("cgroup got pids %v, want %v", cg.pids, want)
			}
		})
	}
}

// dirsCgroup is a real cgroup with its directories known, as
// *cgroup.Group is; Add records the pids it had to move.
type dirsCgroup struct {
	recordingCgroup
	dirs []string
}

func (c *dirsCgroup) Dirs() []string { return c.dirs }

func (c *dirsCgroup) Add(pid int) error {
	_ = c.recordingCgroup.Add(pid)
	for _, d := range c.dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return err
		}
	}
	return nil
}

// TestChildrenAreBornInAV1Cgroup checks that with cgroup v1 a Manager
// forks from a thread inside the user cgroup: children (commands and PTYs)
// start there without a move, no other thread of envd joins, and once the
// Manager shut down the group is empty and can be removed.
// v1TestCgroup makes a v1 group in the memory, pids and cpu hierarchies,
// removed when the test ends (which fails while anything is still in it).
func v1TestCgroup(t *testing.T) (*dirsCgroup, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create cgroups")
	}
	const root = "/sys/fs/cgroup"
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		t.Skip("skipping: cgroup v2 has no per-thread membership; processes are moved as before")
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	group := "/wrenn-proctest-" + hex.EncodeToString(b[:])
	cg := &dirsCgroup{}
	for _, ctrl := range []string{"memory", "pids", "cpu"} {
		dir := filepath.Join(root, ctrl, group)
		if _, err := os.Stat(filepath.Join(root, ctrl, "tasks")); err != nil {
			continue
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatalf("create test cgroup: %v", err)
		}
		t.Cleanup(func() {
			if err := os.Remove(dir); err != nil {
				t.Errorf("remove test cgroup %s (still in use?): %v", dir, err)
			}
		})
		cg.dirs = append(cg.dirs, dir)
	}
	if len(cg.dirs) == 0 {
		t.Skipf("skipping: no v1 memory, pids or cpu hierarchy under %s", root)
	}
	return cg, group
}

func TestChildrenAreBornInAV1Cgroup(t *testing.T) {
	cg, group := v1TestCgroup(t)
	// Registered after the directories' cleanups, so it runs before them.
	m := newManager(t, Options{Cgroup: cg})
	m.waitSpawner()
	m.mu.Lock()
	spawner := m.spawner
	m.mu.Unlock()
	if spawner == nil {
		t.Fatal("the Manager moves processes instead of forking them in the group")
	}
	var inGroup int
	tasks, _ := filepath.Glob("/proc/self/task/*/cgroup")
	for _, f := range tasks {
		data, _ := os.ReadFile(f)
		if strings.Contains(string(data), group) {
			inGroup++
		}
	}
	if inGroup != 1 {
		t.Errorf("%d threads of envd in the user group, want exactly the spawning one", inGroup)
	}
	cat := Spec{Cmd: "/bin/cat", Args: []string{"/proc/self/cgroup"}, Dir: "/"}
	pty := cat
	pty.PTY = &Size{Cols: 80, Rows: 24}
	specs := []Spec{cat, pty}
	for range 10 { // and concurrent starts, all through the one thread
		specs = append(specs, cat)
	}
	var wg sync.WaitGroup
	for i, spec := range specs {
		run := func() {
			_, sub, err := m.Start(spec)
			if err != nil {
				t.Errorf("Start: %v", err)
				return
			}
			var out bytes.Buffer
			for ev := range sub.Events() {
				out.Write(ev.Data)
			}
			sub.Close()
			for _, d := range cg.dirs {
				ctrl := filepath.Base(filepath.Dir(d))
				if !strings.Contains(out.String(), ":"+ctrl+":"+group+"\n") && !strings.Contains(out.String(), ":"+ctrl+":"+group+"\r\n") {
					t.Errorf("pty=%v: child not in %s group %s:\n%s", spec.PTY != nil, ctrl, group, out.String())
				}
			}
		}
		if i < 2 {
			run()
		} else {
			wg.Go(run)
		}
	}
	wg.Wait()
	cg.mu.Lock()
	if len(cg.pids) != 0 {
		t.Errorf("processes %v were moved after they started", cg.pids)
	}
	cg.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range cg.dirs {
		if data, _ := os.ReadFile(filepath.Join(d, "tasks")); len(bytes.TrimSpace(data)) != 0 {
			t.Errorf("%s still has tasks %q after Shutdown", d, data)
		}
	}
}

// A Manager shut down while it still joins the user cgroup ends its
// spawning thread all the same, so the group empties and can be removed.
func TestShutdownDuringSpawnerSetup(t *testing.T) {
	cg, _ := v1TestCgroup(t)
	for range 5 {
		m := NewManager(slog.New(slog.DiscardHandler), Options{Cgroup: cg})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := m.Shutdown(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		m.mu.Lock()
		left := m.spawner
		m.mu.Unlock()
		if left != nil {
			t.Fatal("a spawner outlived Shutdown")
		}
		if _, _, err := m.Start(Spec{Cmd: "/bin/true", Dir: "/"}); !errors.Is(err, ErrClosed) {
			t.Fatalf("Start after Shutdown: %v, want ErrClosed", err)
		}
	}
	// The cgroup's cleanup fails if the thread is still in it; wait for the
	// exiting threads to leave first.
	deadline := time.Now().Add(5 * time.Second)
	for _, d := range cg.dirs {
		for {
			data, _ := os.ReadFile(filepath.Join(d, "tasks"))
			if len(bytes.TrimSpace(data)) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still holds %s", d, data)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

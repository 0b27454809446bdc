package main

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestWatchKillsLargest runs the guard's loop over a fake /proc whose
// meminfo is over the limit and whose largest process is a real child: the
// guard must SIGKILL it and leave the smaller one alone.
func TestWatchKillsLargest(t *testing.T) {
	t.Parallel()
	big := exec.Command("sleep", "60")
	small := exec.Command("sleep", "60")
	for _, c := range []*exec.Cmd{big, small} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	}
	root := fakeProc(t, map[int]proc{
		big.Process.Pid:   {rssPages: 9000, adj: "0", comm: "big"},
		small.Process.Pid: {rssPages: 10, adj: "0", comm: "small"},
	})
	if err := os.WriteFile(filepath.Join(root, "meminfo"), []byte("MemTotal: 200000 kB\nMemFree: 100000 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	g := &guard{proc: root, limit: 50 << 20, protect: map[int]bool{}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	stop := make(chan struct{})
	defer close(stop)
	go g.watch(time.Millisecond, time.Millisecond, stop)

	err := big.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("largest process ended with %v, want SIGKILL", err)
	}
	// The fake /proc still lists the victim as alive, so the guard waits
	// for it and kills nothing else.
	time.Sleep(50 * time.Millisecond)
	if err := small.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("smaller process was killed too: %v", err)
	}
}

// TestWatchUnderLimitKillsNothing: below the limit the guard only reads.
func TestWatchUnderLimitKillsNothing(t *testing.T) {
	t.Parallel()
	c := exec.Command("sleep", "60")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	root := fakeProc(t, map[int]proc{c.Process.Pid: {rssPages: 9000, adj: "0", comm: "big"}})
	if err := os.WriteFile(filepath.Join(root, "meminfo"), []byte("MemTotal: 200000 kB\nMemFree: 190000 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	g := &guard{proc: root, limit: 50 << 20, protect: map[int]bool{}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	stop := make(chan struct{})
	go g.watch(time.Millisecond, time.Millisecond, stop)
	time.Sleep(50 * time.Millisecond)
	close(stop)
	if err := c.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("process under the limit was killed: %v", err)
	}
}

// TestRunExitsWithInitStatus: oomguard leaves with its init's status, a
// signal as 128+signal, and refuses bad arguments.
func TestRunExitsWithInitStatus(t *testing.T) {
	huge := "4611686018427387904" // no host is this full
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"exit status", []string{"-limit", huge, "--", "/bin/sh", "-c", "exit 3"}, 3},
		{"killed", []string{"-limit", huge, "--", "/bin/sh", "-c", "kill -9 $$"}, 137},
		{"init not found", []string{"-limit", huge, "--", "/no/such/init"}, 127},
		{"no limit", []string{"--", "/bin/true"}, 2},
		{"no init", []string{"-limit", "100"}, 2},
		{"idle faster than busy", []string{"-limit", "100", "-interval", "1s", "-idle-interval", "10ms", "--", "/bin/true"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := run(tt.args); got != tt.want {
				t.Fatalf("run(%q) = %d, want %d", tt.args, got, tt.want)
			}
		})
	}
}

package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
	if !alive("/proc", small.Process.Pid) {
		t.Fatal("smaller process was killed too")
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
	if !alive("/proc", c.Process.Pid) {
		t.Fatal("process under the limit was killed")
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

// TestWatchLetsTheVictimsMemoryGo: after the victim is gone, gVisor still
// counts its memory for a moment; the guard must not take that for a new
// overrun and kill the next process (envd, in production), but must act
// at once if the use grows past what it was at the kill.
func TestWatchLetsTheVictimsMemoryGo(t *testing.T) {
	t.Parallel()
	big := exec.Command("sleep", "60")
	next := exec.Command("sleep", "60")
	for _, c := range []*exec.Cmd{big, next} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	}
	root := fakeProc(t, map[int]proc{
		big.Process.Pid:  {rssPages: 9000, adj: "0", comm: "big"},
		next.Process.Pid: {rssPages: 10, adj: "0", comm: "envd"},
	})
	// The guard keeps /proc/meminfo open and rereads it, as gVisor
	// regenerates it on every read: rewrite the same file in place, at a
	// fixed length.
	meminfo := func(freeKB int) {
		t.Helper()
		f, err := os.OpenFile(filepath.Join(root, "meminfo"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte(fmt.Sprintf("MemTotal: 200000 kB\nMemFree: %06d kB\n", freeKB)), 0); err != nil {
			t.Fatal(err)
		}
	}
	meminfo(100000) // 100000 kB used, limit 50 MiB
	g := &guard{proc: root, limit: 50 << 20, protect: map[int]bool{}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	stop := make(chan struct{})
	defer close(stop)
	go g.watch(time.Millisecond, time.Millisecond, stop)

	if err := big.Wait(); err == nil {
		t.Fatal("largest process was not killed")
	}
	// The victim is gone from /proc; its memory is still counted.
	if err := os.RemoveAll(filepath.Join(root, strconv.Itoa(big.Process.Pid))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if !alive("/proc", next.Process.Pid) {
		t.Fatal("the next process was killed for the victim's memory")
	}
	// Now something grows past the use at the kill: a new overrun.
	meminfo(90000)
	// Polled rather than waited for: the cleanup owns next's Wait, and a
	// killed child stays a zombie until then.
	deadline := time.Now().Add(500 * time.Millisecond)
	for alive("/proc", next.Process.Pid) {
		if time.Now().After(deadline) {
			t.Fatal("a new overrun within the settle time killed nothing")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

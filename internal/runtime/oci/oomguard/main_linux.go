// Command oomguard is the OOM killer a gVisor sandbox lacks. gVisor keeps
// the guest's memory in its Sentry's memory file, charged to the sandbox's
// host cgroup as a whole, and enforces no limit of its own (gVisor issue
// 1967): a process that goes over the sandbox's memory limit meets the
// host's memory cgroup, whose OOM kill of any of the sandbox's host tasks
// (the Sentry, the gofer or a ptrace stub) stops the whole sandbox, envd
// included.
//
// The runsc driver therefore starts every sandbox with a memory limit under
// oomguard, as its PID 1, with the sandbox's init as its only child:
//
//	oomguard -limit BYTES -- INIT [ARGS...]
//
// It polls the guest kernel's memory use (/proc/meminfo) and, as soon as
// it passes the limit, SIGKILLs the process with the largest resident set
// weighed by its oom_score_adj, never itself, the init or a process at
// -1000, the way Linux's OOM killer picks a victim. The host cgroup, which stays the
// host's protection, is set above the limit by the driver's headroom so
// that the guard acts first. Otherwise oomguard is a plain init: it
// forwards termination signals to the init, reaps orphans and exits with
// the init's status.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	goruntime "runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn/wrenn/internal/envd/pid1"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	// One P: the guard is a poll loop, and every extra P's spinning is
	// system calls, which cost tens of microseconds each under gVisor's
	// ptrace platform (10 ms polls took 8 % of a core with the default).
	goruntime.GOMAXPROCS(1)
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "oomguard")
	fs := flag.NewFlagSet("oomguard", flag.ContinueOnError)
	limit := fs.Int64("limit", 0, "the sandbox's memory limit in bytes")
	interval := fs.Duration("interval", 10*time.Millisecond, "how often to read the memory use above half the limit")
	idle := fs.Duration("idle-interval", 100*time.Millisecond, "how often to read it below half the limit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *limit <= 0 || *interval <= 0 || *idle < *interval || fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: oomguard -limit BYTES [-interval D] [-idle-interval D] -- INIT [ARGS...]")
		return 2
	}
	init := fs.Args()

	sigs := make(chan os.Signal, 32)
	// Before the start, so the init's exit cannot slip past unnoticed.
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2)
	cmd := exec.Command(init[0], init[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// cmd.Wait is never called: the wait4(-1) loop below reaps the init too.
	if err := cmd.Start(); err != nil {
		log.Error("start init", "path", init[0], "error", err)
		return 127
	}
	child := cmd.Process.Pid

	g := &guard{
		proc:    "/proc",
		limit:   *limit,
		protect: map[int]bool{os.Getpid(): true, child: true},
		log:     log,
	}
	stop := make(chan struct{})
	defer close(stop)
	go g.watch(*interval, *idle, stop)

	return pid1.ForwardAndReap(log, sigs, child)
}

// watch checks the memory use until stop is closed: every interval above
// half the limit, every idle below it. Each read costs about a millisecond
// of CPU under gVisor's ptrace platform (its memory accounting and Go's
// timer wake-up), so an idle sandbox pays about 2 % of a core at 100 ms
// where it would pay 8 % at 10 ms. After a kill it waits for the victim to
// be gone before choosing another, so one overrun costs one process, as
// with Linux's OOM killer.
func (g *guard) watch(interval, idle time.Duration, stop <-chan struct{}) {
	meminfo, err := os.Open(g.proc + "/meminfo")
	if err != nil {
		g.log.Error("no memory accounting to guard", "error", err)
		return
	}
	defer meminfo.Close()
	buf := make([]byte, 4096)
	timer := time.NewTimer(idle)
	defer timer.Stop()
	// After a kill: the victim, until it is gone; then, for settle, the
	// use measured at the kill. gVisor frees a dead process's memory a
	// little later, so until then a use no higher than at the kill is the
	// victim's memory still counted, not a new overrun (killing on it took
	// envd next).
	var (
		victim      int
		killedAt    time.Time
		usedAtKill  int64
		settleUntil time.Time
		failing     bool
	)
	for next := interval; ; timer.Reset(next) {
		select {
		case <-stop:
			return
		case <-timer.C:
		}
		next = interval
		if victim != 0 {
			// A victim still there after a second is chosen among the
			// rest again (it may be chosen, and killed, once more).
			if alive(g.proc, victim) && time.Since(killedAt) < time.Second {
				continue
			}
			victim, settleUntil = 0, time.Now().Add(settle)
		}
		n, err := meminfo.ReadAt(buf, 0)
		used := int64(0)
		if n > 0 || err == nil {
			used, err = memUsed(buf[:n])
		}
		if err != nil {
			// Keep trying: giving up would leave the sandbox unguarded.
			// One line per run of failures.
			if !failing {
				g.log.Error("read the memory use", "error", err)
			}
			failing = true
			continue
		}
		failing = false
		switch {
		case used > g.limit && time.Now().Before(settleUntil) && used <= usedAtKill:
		case used > g.limit:
			victim, killedAt, usedAtKill = g.kill(used), time.Now(), used
		case used <= g.limit/2:
			next = idle
		}
	}
}

// settle is how long after a victim is gone its memory may still be
// counted: the use must fall under the limit or grow past what it was at
// the kill before another process goes.
const settle = time.Second

// kill SIGKILLs the largest eligible process and returns its pid, 0 if
// none could be killed.
func (g *guard) kill(used int64) int {
	v, err := g.pick()
	if err != nil {
		g.log.Error("over the memory limit, but no process to kill", "used", used, "limit", g.limit, "error", err)
		return 0
	}
	if err := unix.Kill(v.pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		g.log.Error("kill", "pid", v.pid, "error", err)
		return 0
	}
	g.log.Warn("out of memory: killed process", "pid", v.pid, "comm", v.comm, "rss", v.rss,
		"used", used, "limit", g.limit)
	return v.pid
}

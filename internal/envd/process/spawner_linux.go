package process

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// cgroupDirs is what a Cgroup offers when its directories are known
// (*cgroup.Group does): then children can be born in it instead of moved.
type cgroupDirs interface {
	Dirs() []string
}

// threadSpawner forks every process from one OS thread of envd that sits in
// the user cgroup, so children are born there. In cgroup v1 membership is
// per thread and a child starts in its forking thread's cgroups; moving
// each child after the fork instead takes the kernel's global
// cgroup_threadgroup_rwsem for writing, which waits for an RCU grace period
// (up to milliseconds) and meanwhile stalls every fork and exit on the host,
// the child's own exit included. cgroup v2 has no per-thread membership for
// domain groups and is left to the per-process move.
//
// Only this thread joins: envd's other threads, and so its memory (charged
// to its main thread's memory cgroup), its CPU time and its own pids stay in
// envd's cgroups. The thread runs nothing but fork+exec, at most one at a
// time, which Manager.Start serialises anyway.
type threadSpawner struct {
	reqs chan spawnRequest
	done chan struct{}
	tid  int
}

type spawnRequest struct {
	cmd *exec.Cmd
	err chan error
}

// newThreadSpawner starts the thread and moves it into each v1 group of
// dirs. It fails, leaving nothing behind, when dirs are not all v1 groups
// or the thread cannot join them.
func newThreadSpawner(dirs []string) (*threadSpawner, error) {
	if len(dirs) == 0 {
		return nil, errors.New("the cgroup has no directories")
	}
	for _, d := range dirs {
		// Only v1 groups have a tasks file; a v2 group offers cgroup.threads
		// only in threaded mode.
		if _, err := os.Stat(filepath.Join(d, "tasks")); err != nil {
			return nil, fmt.Errorf("cgroup %s has no per-thread membership: %w", d, err)
		}
	}
	s := &threadSpawner{reqs: make(chan spawnRequest), done: make(chan struct{})}
	joined := make(chan error, 1)
	go s.run(dirs, joined)
	if err := <-joined; err != nil {
		s.wait()
		return nil, err
	}
	return s, nil
}

// run locks its goroutine to a thread for good, moves that thread into
// dirs and then forks what start asks for until stop. A goroutine that
// returns while locked takes its thread with it, so no other goroutine
// ever runs in the user cgroup and the group is left by the thread's end.
func (s *threadSpawner) run(dirs []string, joined chan<- error) {
	runtime.LockOSThread()
	if unix.Gettid() == unix.Getpid() {
		// The runtime never ends the main thread (it parks it), so the
		// group could not be left. Hand over to a goroutine that locks
		// another thread: while this one holds the main thread, the other
		// cannot be on it.
		handed := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			close(handed)
			s.run(dirs, joined)
		}()
		<-handed
		runtime.UnlockOSThread()
		return
	}
	defer close(s.done)
	s.tid = unix.Gettid()
	// "0" is the writing thread itself, which the kernel moves without
	// taking the global threadgroup lock: that lock's write side waits for
	// an RCU grace period. Moving into the three groups took 5 to 14 ms
	// here when written as the thread's id and 0.2 ms as "0", and the
	// sandbox's first command waits for it.
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "tasks"), []byte("0"), 0); err != nil {
			joined <- fmt.Errorf("move envd's spawning thread into cgroup %s: %w", d, err)
			return
		}
	}
	joined <- nil
	for r := range s.reqs {
		r.err <- r.cmd.Start()
	}
}

// start runs cmd.Start on the spawning thread.
func (s *threadSpawner) start(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	s.reqs <- spawnRequest{cmd: cmd, err: errc}
	return <-errc
}

// stop ends the thread and returns once it is gone, so the group can be
// removed (a cgroup with a task in it cannot). No start may follow.
func (s *threadSpawner) stop() {
	close(s.reqs)
	s.wait()
}

// wait returns once the spawning goroutine returned and its thread exited
// (the runtime ends it right after; this waits at most a second).
func (s *threadSpawner) wait() {
	<-s.done
	task := fmt.Sprintf("/proc/self/task/%d", s.tid)
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if _, err := os.Stat(task); errors.Is(err, os.ErrNotExist) {
			return
		}
	}
}

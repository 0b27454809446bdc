package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

const (
	defaultBuffer     = 256
	defaultDrainGrace = time.Second
	readChunk         = 32 << 10
)

// Manager starts processes and keeps track of them until they have exited and
// every subscriber got their end event. It is safe for concurrent use.
type Manager struct {
	log  *slog.Logger
	opts Options

	mu     sync.Mutex
	byPID  map[int]*Proc
	byTag  map[string]*Proc
	closed bool
	wg     sync.WaitGroup // one per tracked process

	// spawner, when set, forks every process from a thread in
	// opts.Cgroup, so children are born there and need no move. Set once,
	// under mu, by the setup NewManager starts; Shutdown stops and clears
	// it under mu.
	spawner *threadSpawner
	// spawnerSetup is closed when that setup is over, nil when there is
	// none. Joining cgroups waits for RCU grace periods (milliseconds), so
	// it runs while envd already serves; Start and Shutdown wait for it.
	spawnerSetup chan struct{}
}

// NewManager returns an empty Manager.
func NewManager(log *slog.Logger, opts Options) *Manager {
	if opts.Buffer <= 0 {
		opts.Buffer = defaultBuffer
	}
	if opts.DrainGrace <= 0 {
		opts.DrainGrace = defaultDrainGrace
	}
	m := &Manager{log: log, opts: opts, byPID: map[int]*Proc{}, byTag: map[string]*Proc{}}
	if g, ok := opts.Cgroup.(cgroupDirs); ok {
		m.spawnerSetup = make(chan struct{})
		go m.setUpSpawner(g)
	}
	return m
}

// setUpSpawner starts the thread that forks in g's cgroups, unless the
// Manager was shut down meanwhile.
func (m *Manager) setUpSpawner(g cgroupDirs) {
	defer close(m.spawnerSetup)
	s, err := newThreadSpawner(g.Dirs())
	if err != nil {
		m.log.Debug("processes are moved into the user cgroup after they start", "error", err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		s.stop()
		return
	}
	m.spawner = s
}

// waitSpawner waits until the spawner's setup is over.
func (m *Manager) waitSpawner() {
	if m.spawnerSetup != nil {
		<-m.spawnerSetup
	}
}

// Proc is one started process. Its exported fields never change.
type Proc struct {
	PID  int
	Tag  string
	Cmd  string
	Args []string
	Envs map[string]string
	Dir  string

	m     *Manager
	cmd   *exec.Cmd
	stdin *os.File // write end of the stdin pipe; nil without stdin or with a PTY
	tty   *os.File // PTY master; nil without a PTY

	mu     sync.Mutex
	subs   map[*Subscription]struct{}
	end    *End
	exited bool // reaped: the pid may be reused, send no more signals
	done   chan struct{}
}

// Subscription receives a process's events. Events is closed after the end
// event; Close must be called when the subscriber stops reading.
type Subscription struct {
	ch   chan Event
	gone chan struct{}
	once sync.Once
	p    *Proc
}

// Events returns the subscription's channel.
func (s *Subscription) Events() <-chan Event { return s.ch }

// Close ends the subscription; the process goes on.
func (s *Subscription) Close() {
	s.once.Do(func() {
		close(s.gone)
		s.p.mu.Lock()
		delete(s.p.subs, s)
		s.p.mu.Unlock()
	})
}

// Start starts spec and returns the process with a subscription taken before
// any output was read, so the caller sees all of it.
func (m *Manager) Start(spec Spec) (*Proc, *Subscription, error) {
	if spec.Cmd == "" {
		return nil, nil, fmt.Errorf("%w: process.cmd is empty", ErrInvalid)
	}
	m.waitSpawner()
	path, err := lookPath(spec.Cmd, spec.Env, spec.Dir)
	if err != nil {
		return nil, nil, err
	}
	if fi, err := os.Stat(spec.Dir); err != nil || !fi.IsDir() {
		return nil, nil, fmt.Errorf("%w: process.cwd %q is not an existing directory", ErrInvalid, spec.Dir)
	}

	cmd := &exec.Cmd{
		Path:        path,
		Args:        append([]string{spec.Cmd}, spec.Args...),
		Env:         spec.Env,
		Dir:         spec.Dir,
		SysProcAttr: &syscall.SysProcAttr{},
	}
	if spec.Cred != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: spec.Cred.UID, Gid: spec.Cred.GID, Groups: spec.Cred.Groups}
	}

	p := &Proc{
		Tag: spec.Tag, Cmd: spec.Cmd, Args: spec.Args, Envs: spec.Envs, Dir: spec.Dir,
		m: m, cmd: cmd, subs: map[*Subscription]struct{}{}, done: make(chan struct{}),
	}
	// Files the child gets; closed in the parent once it started (or failed).
	var childFiles []*os.File
	// Files the parent reads output from.
	var outputs []output
	closeAll := func() {
		for _, f := range childFiles {
			_ = f.Close()
		}
		for _, o := range outputs {
			_ = o.f.Close()
		}
		if p.stdin != nil {
			_ = p.stdin.Close()
		}
	}

	if spec.PTY != nil {
		master, tty, err := openPTY(*spec.PTY)
		if err != nil {
			return nil, nil, fmt.Errorf("open pty: %w", err)
		}
		childFiles = append(childFiles, tty)
		p.tty = master
		outputs = append(outputs, output{master, PTY})
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		// A new session with the PTY as controlling terminal, so the shell
		// gets job control and SIGWINCH reaches its foreground group.
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
	} else {
		// Its own process group, so signals and shutdown reach its children.
		cmd.SysProcAttr.Setpgid = true
		if spec.Stdin {
			r, w, err := os.Pipe()
			if err != nil {
				return nil, nil, fmt.Errorf("create stdin pipe: %w", err)
			}
			childFiles = append(childFiles, r)
			p.stdin = w
			cmd.Stdin = r
		}
		for _, s := range []Stream{Stdout, Stderr} {
			r, w, err := os.Pipe()
			if err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("create output pipe: %w", err)
			}
			childFiles = append(childFiles, w)
			outputs = append(outputs, output{r, s})
			if s == Stdout {
				cmd.Stdout = w
			} else {
				cmd.Stderr = w
			}
		}
	}

	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		closeAll()
		return nil, nil, ErrClosed
	}
	if spec.Tag != "" {
		if other, ok := m.byTag[spec.Tag]; ok {
			m.mu.Unlock()
			closeAll()
			return nil, nil, fmt.Errorf("%w: tag %q is already used by process %d", ErrConflict, spec.Tag, other.PID)
		}
	}
	// Starting under the lock keeps tag reservation and registration atomic;
	// fork+exec takes milliseconds.
	start := cmd.Start
	if m.spawner != nil {
		start = func() error { return m.spawner.start(cmd) }
	}
	if err := start(); err != nil {
		m.mu.Unlock()
		closeAll()
		return nil, nil, classifyStartError(spec, err)
	}
	for _, f := range childFiles {
		_ = f.Close()
	}
	p.PID = cmd.Process.Pid
	bornInCgroup := m.spawner != nil
	sub := p.subscribeLocked()
	m.byPID[p.PID] = p
	if p.Tag != "" {
		m.byTag[p.Tag] = p
	}
	m.wg.Add(1)
	m.mu.Unlock()

	// Until these writes the child runs with envd's oom_score_adj and,
	// unless it was born in the user cgroup (v1, see threadSpawner), in
	// envd's cgroup: Go cannot apply either between fork and exec, so what
	// the child forks before them inherits envd's. The oom_score_adj write
	// comes first because it is quick (a cgroup move can wait for an RCU
	// grace period), and envd's own value is -999, not -1000, so such an
	// early grandchild is still killable.
	if m.opts.OOMScoreAdj != nil {
		adj := strconv.Itoa(*m.opts.OOMScoreAdj)
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", p.PID), []byte(adj), 0); err != nil {
			m.log.Debug("set child oom_score_adj", "pid", p.PID, "error", err)
		}
	}
	if m.opts.Cgroup != nil && !bornInCgroup {
		if err := m.opts.Cgroup.Add(p.PID); err != nil {
			m.log.Debug("move process into the user cgroup", "pid", p.PID, "error", err)
		}
	}
	m.log.Debug("process started", "pid", p.PID, "cmd", spec.Cmd, "tag", spec.Tag, "pty", spec.PTY != nil)
	go p.run(outputs)
	return p, sub, nil
}

type output struct {
	f *os.File
	s Stream
}

func openPTY(size Size) (master, tty *os.File, err error) {
	m, tty, err := pty.Open()
	if err != nil {
		return nil, nil, err
	}
	// pty.Open hands back a master that Fd() made blocking, so deadlines do
	// not work on it. A non-blocking duplicate goes through the poller: reads
	// can then be bounded after exit and unblocked by Close.
	fd, err := unix.FcntlInt(m.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	_ = m.Close()
	if err != nil {
		_ = tty.Close()
		return nil, nil, fmt.Errorf("duplicate pty master: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		_ = tty.Close()
		return nil, nil, fmt.Errorf("make pty master non-blocking: %w", err)
	}
	master = os.NewFile(uintptr(fd), "/dev/ptmx")
	if err := setWinsize(master, size); err != nil {
		_ = master.Close()
		_ = tty.Close()
		return nil, nil, err
	}
	return master, tty, nil
}

func setWinsize(f *os.File, size Size) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("set pty size: %w", err)
	}
	var ierr error
	err = rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: size.Rows, Col: size.Cols})
	})
	if err == nil {
		err = ierr
	}
	if err != nil {
		return fmt.Errorf("set pty size %dx%d: %w", size.Cols, size.Rows, err)
	}
	return nil
}

// lookPath resolves cmd against the PATH of the process's own environment,
// not envd's, and relative paths against its working directory.
func lookPath(cmd string, env []string, dir string) (string, error) {
	check := func(p string) error {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return os.ErrPermission
		}
		return nil
	}
	if strings.Contains(cmd, "/") {
		p := cmd
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := check(p); err != nil {
			return "", fmt.Errorf("%w: process.cmd %q is not an executable file", ErrInvalid, cmd)
		}
		return p, nil
	}
	pathEnv := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathEnv = v
		}
	}
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, cmd)
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if check(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: process.cmd %q was not found in PATH %q", ErrInvalid, cmd, pathEnv)
}

func classifyStartError(spec Spec, err error) error {
	switch {
	case errors.Is(err, os.ErrPermission), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("%w: start %q: %w", ErrPermission, spec.Cmd, err)
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ENOEXEC), errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("%w: start %q: %w", ErrInvalid, spec.Cmd, err)
	default:
		return fmt.Errorf("start %q: %w", spec.Cmd, err)
	}
}

// run reads the process's output until it exited, then publishes the end
// event and untracks it.
func (p *Proc) run(outputs []output) {
	defer p.m.wg.Done()
	var readers sync.WaitGroup
	for _, o := range outputs {
		readers.Add(1)
		go func() {
			defer readers.Done()
			p.read(o)
		}()
	}

	state, waitErr := p.cmd.Process.Wait()
	p.mu.Lock()
	p.exited = true
	p.mu.Unlock()

	// Output written before exit is still in the pipe; read it. Descendants
	// may hold the pipe open for ever, so stop reading after a grace period.
	deadline := time.Now().Add(p.m.opts.DrainGrace)
	for _, o := range outputs {
		if err := o.f.SetReadDeadline(deadline); err != nil {
			// Not pollable: closing is the only way to stop the reader.
			_ = o.f.Close()
		}
	}
	readers.Wait()
	for _, o := range outputs {
		_ = o.f.Close()
	}
	if p.stdin != nil {
		_ = p.stdin.Close()
	}

	end := &End{ExitCode: -1}
	if state != nil {
		end.ExitCode = state.ExitCode()
		end.Exited = state.Exited()
		end.Status = state.String()
	}
	if waitErr != nil {
		end.Error = waitErr.Error()
	}
	p.m.log.Debug("process ended", "pid", p.PID, "tag", p.Tag, "status", end.Status)
	p.finish(end)
}

func (p *Proc) read(o output) {
	for {
		buf := make([]byte, readChunk)
		n, err := o.f.Read(buf)
		if n > 0 {
			p.publish(Event{Stream: o.s, Data: buf[:n:n]})
		}
		if err != nil {
			// EOF, EIO from a PTY whose last slave closed, the drain deadline
			// or a close: all mean this output is over.
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, syscall.EIO) && !errors.Is(err, os.ErrClosed) {
				p.m.log.Warn("read process output", "pid", p.PID, "error", err)
			}
			return
		}
	}
}

// publish hands ev to every current subscriber, waiting for room in each
// channel unless the subscriber leaves.
func (p *Proc) publish(ev Event) {
	p.mu.Lock()
	subs := make([]*Subscription, 0, len(p.subs))
	for s := range p.subs {
		subs = append(subs, s)
	}
	p.mu.Unlock()
	for _, s := range subs {
		select {
		case s.ch <- ev:
		case <-s.gone:
		}
	}
}

// finish records the end, delivers it to every subscriber, closes their
// channels and then untracks the process.
func (p *Proc) finish(end *End) {
	p.mu.Lock()
	p.end = end
	subs := make([]*Subscription, 0, len(p.subs))
	for s := range p.subs {
		subs = append(subs, s)
	}
	p.mu.Unlock()
	for _, s := range subs {
		select {
		case s.ch <- Event{End: end}:
		case <-s.gone:
		}
		close(s.ch)
	}
	m := p.m
	m.mu.Lock()
	if m.byPID[p.PID] == p {
		delete(m.byPID, p.PID)
	}
	if p.Tag != "" && m.byTag[p.Tag] == p {
		delete(m.byTag, p.Tag)
	}
	m.mu.Unlock()
	close(p.done)
}

// Subscribe returns a subscription to the output that follows and the end
// event. Subscribing after the end yields just the end event.
func (p *Proc) Subscribe() *Subscription {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.subscribeLocked()
}

func (p *Proc) subscribeLocked() *Subscription {
	s := &Subscription{ch: make(chan Event, p.m.opts.Buffer), gone: make(chan struct{}), p: p}
	if p.end != nil {
		s.ch <- Event{End: p.end}
		close(s.ch)
		return s
	}
	p.subs[s] = struct{}{}
	return s
}

// Done is closed once the process exited and was untracked.
func (p *Proc) Done() <-chan struct{} { return p.done }

// HasPTY reports whether the process runs on a pseudo-terminal.
func (p *Proc) HasPTY() bool { return p.tty != nil }

// WriteStdin writes to the process's standard input. For a PTY process that
// is the terminal, as typing would be.
func (p *Proc) WriteStdin(ctx context.Context, b []byte) error {
	switch {
	case p.tty != nil:
		return p.write(ctx, p.tty, b)
	case p.stdin != nil:
		return p.write(ctx, p.stdin, b)
	default:
		return fmt.Errorf("%w: process %d was started without stdin", ErrPrecondition, p.PID)
	}
}

// WritePTY writes to the process's terminal.
func (p *Proc) WritePTY(ctx context.Context, b []byte) error {
	if p.tty == nil {
		return fmt.Errorf("%w: process %d has no pty", ErrPrecondition, p.PID)
	}
	return p.write(ctx, p.tty, b)
}

// write blocks while the process does not read, but no longer than ctx.
func (p *Proc) write(ctx context.Context, f *os.File, b []byte) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = f.SetWriteDeadline(dl)
		defer func() { _ = f.SetWriteDeadline(time.Time{}) }()
	}
	if _, err := f.Write(b); err != nil {
		if errors.Is(err, os.ErrClosed) || errors.Is(err, syscall.EPIPE) {
			return fmt.Errorf("%w: input of process %d is closed", ErrPrecondition, p.PID)
		}
		return fmt.Errorf("write input of process %d: %w", p.PID, err)
	}
	return nil
}

// CloseStdin closes the process's standard input so it reads EOF. For a PTY
// process it sends the terminal's EOF character instead.
func (p *Proc) CloseStdin() error {
	switch {
	case p.tty != nil:
		_, err := p.tty.Write([]byte{4}) // ^D, the default VEOF
		if err != nil {
			return fmt.Errorf("send EOF to pty of process %d: %w", p.PID, err)
		}
		return nil
	case p.stdin != nil:
		if err := p.stdin.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			return fmt.Errorf("close stdin of process %d: %w", p.PID, err)
		}
		return nil
	default:
		return fmt.Errorf("%w: process %d was started without stdin", ErrPrecondition, p.PID)
	}
}

// Signal sends sig to the process's group, so a shell's children get it too.
// A process that has already exited is left alone (its pid may be reused).
func (p *Proc) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return nil
	}
	err := syscall.Kill(-p.PID, sig)
	if errors.Is(err, syscall.ESRCH) {
		// It left its group; signal it alone.
		err = syscall.Kill(p.PID, sig)
	}
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		if errors.Is(err, syscall.EPERM) {
			return fmt.Errorf("%w: signal process %d: %w", ErrPermission, p.PID, err)
		}
		return fmt.Errorf("signal process %d: %w", p.PID, err)
	}
	return nil
}

// Resize changes the terminal size; the kernel sends SIGWINCH to the
// terminal's foreground process group.
func (p *Proc) Resize(size Size) error {
	if p.tty == nil {
		return fmt.Errorf("%w: process %d has no pty to resize", ErrPrecondition, p.PID)
	}
	if size.Cols == 0 || size.Rows == 0 {
		return fmt.Errorf("%w: pty.size needs non-zero cols and rows", ErrInvalid)
	}
	return setWinsize(p.tty, size)
}

// ByPID returns the tracked process with pid.
func (m *Manager) ByPID(pid int) (*Proc, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.byPID[pid]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("%w: no process with pid %d", ErrNotFound, pid)
}

// ByTag returns the tracked process with tag.
func (m *Manager) ByTag(tag string) (*Proc, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.byTag[tag]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("%w: no process with tag %q", ErrNotFound, tag)
}

// List returns the tracked processes ordered by pid.
func (m *Manager) List() []*Proc {
	m.mu.Lock()
	ps := make([]*Proc, 0, len(m.byPID))
	for _, p := range m.byPID {
		ps = append(ps, p)
	}
	m.mu.Unlock()
	sort.Slice(ps, func(i, j int) bool { return ps[i].PID < ps[j].PID })
	return ps
}

// Shutdown refuses new processes, kills the process group of every tracked
// process and waits until they are untracked or ctx ends.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.waitSpawner()
	m.mu.Lock()
	m.closed = true
	if m.spawner != nil {
		// No Start spawns once closed is set under mu.
		m.spawner.stop()
		m.spawner = nil
	}
	ps := make([]*Proc, 0, len(m.byPID))
	for _, p := range m.byPID {
		ps = append(ps, p)
	}
	m.mu.Unlock()
	for _, p := range ps {
		if err := p.Signal(syscall.SIGKILL); err != nil {
			m.log.Warn("kill process at shutdown", "pid", p.PID, "error", err)
		}
	}
	done := make(chan struct{})
	go func() {
		m.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for processes to end: %w", ctx.Err())
	}
}

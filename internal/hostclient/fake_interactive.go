package hostclient

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"sync"
	"time"
)

// fakeProc is a process of the fake host: it prints its command line, then
// echoes input back (on stdout, or on its terminal), and ends with exit 0
// when stdin is closed, or killed when signalled. A terminal reports each
// resize as "size ROWS COLS\n".
type fakeProc struct {
	info  ProcessInfo
	pty   bool
	stdin bool

	mu     sync.Mutex
	events []ProcessEvent
	done   bool
	wake   chan struct{} // closed and replaced on every new event
}

func (p *fakeProc) emit(ev ProcessEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	p.events = append(p.events, ev)
	p.done = ev.Kind == EventEnd
	close(p.wake)
	p.wake = make(chan struct{})
}

// fakeStream reads a fakeProc's events from index next on.
type fakeStream struct {
	ctx  context.Context
	p    *fakeProc
	next int
	once sync.Once
	stop chan struct{}
}

func (s *fakeStream) Recv() (ProcessEvent, error) {
	for {
		s.p.mu.Lock()
		if s.next < len(s.p.events) {
			ev := s.p.events[s.next]
			s.next++
			s.p.mu.Unlock()
			return ev, nil
		}
		if s.p.done {
			s.p.mu.Unlock()
			return ProcessEvent{}, io.EOF
		}
		wake := s.p.wake
		s.p.mu.Unlock()
		select {
		case <-wake:
		case <-s.stop:
			return ProcessEvent{}, &Error{Op: "process stream", Class: ErrUnavailable, Err: ErrStreamCut}
		case <-s.ctx.Done():
			return ProcessEvent{}, &Error{Op: "process stream", Class: ErrTimeout, Err: s.ctx.Err()}
		}
	}
}

func (s *fakeStream) Close() error {
	s.once.Do(func() { close(s.stop) })
	return nil
}

// fakeSandboxData is what the fake holds inside one sandbox.
type fakeSandboxData struct {
	nextPID uint32
	procs   map[uint32]*fakeProc
	files   map[string][]byte
	dirs    map[string]bool
}

func (f *Fake) data(op, sandboxID string) (*fakeSandboxData, error) {
	st, ok := f.State(sandboxID)
	switch {
	case !ok:
		return nil, &Error{Op: op, Class: ErrNotFound, Message: "sandbox " + sandboxID + " not found"}
	case st != StateRunning:
		return nil, &Error{Op: op, Class: ErrConflict, Message: "sandbox " + sandboxID + " is " + string(st)}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inside == nil {
		f.inside = map[string]*fakeSandboxData{}
	}
	d := f.inside[sandboxID]
	if d == nil {
		d = &fakeSandboxData{nextPID: 100, procs: map[uint32]*fakeProc{}, files: map[string][]byte{}, dirs: map[string]bool{"/": true}}
		f.inside[sandboxID] = d
	}
	return d, nil
}

func (f *Fake) proc(op, sandboxID string, sel Selector) (*fakeProc, error) {
	d, err := f.data(op, sandboxID)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for pid, p := range d.procs {
		p.mu.Lock()
		done := p.done
		p.mu.Unlock()
		if done {
			continue
		}
		if (sel.PID != 0 && pid == sel.PID) || (sel.PID == 0 && sel.Tag != "" && p.info.Tag == sel.Tag) {
			return p, nil
		}
	}
	return nil, &Error{Op: op, Class: ErrNotFound, Message: fmt.Sprintf("process %d%s not found", sel.PID, sel.Tag)}
}

func (f *Fake) start(ctx context.Context, op string, req ProcessRequest) (*fakeProc, error) {
	f.count(opName(op))
	if req.Cmd == "" {
		return nil, &Error{Op: op, Class: ErrInvalid, Message: "cmd is empty"}
	}
	d, err := f.data(op, req.SandboxID)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	d.nextPID++
	p := &fakeProc{
		info: ProcessInfo{PID: d.nextPID, Tag: req.Tag, Cmd: req.Cmd, Args: req.Args, Cwd: req.Cwd},
		pty:  req.PTY != nil, stdin: req.Stdin || req.PTY != nil, wake: make(chan struct{}),
	}
	d.procs[p.info.PID] = p
	f.mu.Unlock()
	p.emit(ProcessEvent{Kind: EventStart, PID: p.info.PID})
	line := strings.TrimSpace(req.Cmd + " " + strings.Join(req.Args, " "))
	kind := EventStdout
	if p.pty {
		kind = EventPTY
	}
	p.emit(ProcessEvent{Kind: kind, Data: []byte(line + "\n")})
	if !p.stdin {
		p.emit(ProcessEvent{Kind: EventEnd, Exited: true, Status: "exit status 0"})
	}
	return p, nil
}

func opName(op string) string {
	switch op {
	case "start process":
		return "StartProcess"
	case "start background process":
		return "StartBackground"
	}
	return op
}

// StartProcess starts a fake process and streams its events.
func (f *Fake) StartProcess(ctx context.Context, req ProcessRequest) (ProcessStream, error) {
	p, err := f.start(ctx, "start process", req)
	if err != nil {
		return nil, err
	}
	return &fakeStream{ctx: ctx, p: p, stop: make(chan struct{})}, nil
}

// StartBackground starts a fake process and returns it.
func (f *Fake) StartBackground(ctx context.Context, req ProcessRequest) (ProcessInfo, error) {
	p, err := f.start(ctx, "start background process", req)
	if err != nil {
		return ProcessInfo{}, err
	}
	return p.info, nil
}

// ListProcesses lists the fake's processes that have not ended, by pid.
func (f *Fake) ListProcesses(ctx context.Context, sandboxID string) ([]ProcessInfo, error) {
	f.count("ListProcesses")
	d, err := f.data("list processes", sandboxID)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []ProcessInfo{}
	for _, p := range d.procs {
		p.mu.Lock()
		if !p.done {
			out = append(out, p.info)
		}
		p.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out, nil
}

// AttachProcess streams a fake process's events from its start on.
func (f *Fake) AttachProcess(ctx context.Context, sandboxID string, sel Selector) (ProcessStream, error) {
	f.count("AttachProcess")
	p, err := f.proc("attach to process", sandboxID, sel)
	if err != nil {
		return nil, err
	}
	return &fakeStream{ctx: ctx, p: p, stop: make(chan struct{})}, nil
}

// SignalProcess ends a fake process as killed by sig.
func (f *Fake) SignalProcess(ctx context.Context, sandboxID string, sel Selector, sig Signal) error {
	f.count("SignalProcess")
	if sig != SignalTerm && sig != SignalKill {
		return &Error{Op: "signal process", Class: ErrInvalid, Message: fmt.Sprintf("signal %q is not SIGTERM or SIGKILL", sig)}
	}
	p, err := f.proc("signal process", sandboxID, sel)
	if err != nil {
		return err
	}
	code := 137
	if sig == SignalTerm {
		code = 143
	}
	p.emit(ProcessEvent{Kind: EventEnd, ExitCode: code, Exited: false, Status: "signal: " + string(sig)})
	return nil
}

// SendInput echoes data back as the process's output.
func (f *Fake) SendInput(ctx context.Context, sandboxID string, sel Selector, data []byte, pty bool) error {
	f.count("SendInput")
	p, err := f.proc("send input", sandboxID, sel)
	if err != nil {
		return err
	}
	if pty != p.pty || !p.stdin {
		return &Error{Op: "send input", Class: ErrInvalid, Message: "the process does not take this input"}
	}
	kind := EventStdout
	if pty {
		kind = EventPTY
	}
	p.emit(ProcessEvent{Kind: kind, Data: bytes.Clone(data)})
	return nil
}

// CloseStdin ends a fake process with exit 0.
func (f *Fake) CloseStdin(ctx context.Context, sandboxID string, sel Selector) error {
	f.count("CloseStdin")
	p, err := f.proc("close stdin", sandboxID, sel)
	if err != nil {
		return err
	}
	p.emit(ProcessEvent{Kind: EventEnd, Exited: true, Status: "exit status 0"})
	return nil
}

// ResizePTY reports the new size on the terminal.
func (f *Fake) ResizePTY(ctx context.Context, sandboxID string, sel Selector, cols, rows uint32) error {
	f.count("ResizePTY")
	p, err := f.proc("resize terminal", sandboxID, sel)
	if err != nil {
		return err
	}
	if !p.pty {
		return &Error{Op: "resize terminal", Class: ErrInvalid, Message: "the process has no terminal"}
	}
	p.emit(ProcessEvent{Kind: EventPTY, Data: fmt.Appendf(nil, "size %d %d\n", rows, cols)})
	return nil
}

func fakePath(p string) string {
	if !strings.HasPrefix(p, "/") {
		p = "/home/user/" + p
	}
	return path.Clean(p)
}

// ReadFile returns a file written with WriteFile.
func (f *Fake) ReadFile(ctx context.Context, sandboxID, p, user string) (io.ReadCloser, int64, error) {
	f.count("ReadFile")
	d, err := f.data("read file", sandboxID)
	if err != nil {
		return nil, 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := d.files[fakePath(p)]
	if !ok {
		return nil, 0, &Error{Op: "read file", Class: ErrNotFound, Message: "open " + fakePath(p) + ": no such file or directory"}
	}
	return io.NopCloser(bytes.NewReader(b)), int64(len(b)), nil
}

// WriteFile stores r's bytes, creating parent directories.
func (f *Fake) WriteFile(ctx context.Context, sandboxID, p, user string, r io.Reader, size int64) error {
	f.count("WriteFile")
	d, err := f.data("write file", sandboxID)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return &Error{Op: "write file", Class: ErrUnavailable, Err: err}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fp := fakePath(p)
	for dir := path.Dir(fp); !d.dirs[dir]; dir = path.Dir(dir) {
		d.dirs[dir] = true
	}
	d.files[fp] = b
	return nil
}

func (d *fakeSandboxData) entry(p string) (Entry, bool) {
	if b, ok := d.files[p]; ok {
		return Entry{Name: path.Base(p), Path: p, Type: EntryFile, Size: int64(len(b)), Mode: 0o644, Owner: "root", Group: "root"}, true
	}
	if d.dirs[p] {
		return Entry{Name: path.Base(p), Path: p, Type: EntryDir, Mode: 0o755 | 1<<31, Owner: "root", Group: "root"}, true
	}
	return Entry{}, false
}

// ListDir lists what lies below p, to depth levels.
func (f *Fake) ListDir(ctx context.Context, sandboxID, p, user string, depth uint32) ([]Entry, error) {
	f.count("ListDir")
	d, err := f.data("list directory", sandboxID)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	root := fakePath(p)
	if !d.dirs[root] {
		return nil, &Error{Op: "list directory", Class: ErrNotFound, Message: root + ": no such directory"}
	}
	depth = max(depth, 1)
	var out []Entry
	add := func(q string) {
		rel := strings.TrimPrefix(strings.TrimPrefix(q, root), "/")
		if q == root || !strings.HasPrefix(q, strings.TrimSuffix(root, "/")+"/") || uint32(strings.Count(rel, "/")+1) > depth {
			return
		}
		e, _ := d.entry(q)
		out = append(out, e)
	}
	for q := range d.files {
		add(q)
	}
	for q := range d.dirs {
		add(q)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// MakeDir creates a directory and its parents.
func (f *Fake) MakeDir(ctx context.Context, sandboxID, p, user string) (Entry, error) {
	f.count("MakeDir")
	d, err := f.data("make directory", sandboxID)
	if err != nil {
		return Entry{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fp := fakePath(p)
	if _, ok := d.files[fp]; ok {
		return Entry{}, &Error{Op: "make directory", Class: ErrConflict, Message: fp + " exists and is a file"}
	}
	for dir := fp; !d.dirs[dir]; dir = path.Dir(dir) {
		d.dirs[dir] = true
	}
	e, _ := d.entry(fp)
	return e, nil
}

// Remove deletes a file or a directory tree.
func (f *Fake) Remove(ctx context.Context, sandboxID, p, user string) error {
	f.count("Remove")
	d, err := f.data("remove path", sandboxID)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fp := fakePath(p)
	if _, ok := d.entry(fp); !ok {
		return &Error{Op: "remove path", Class: ErrNotFound, Message: fp + ": no such file or directory"}
	}
	for q := range d.files {
		if q == fp || strings.HasPrefix(q, fp+"/") {
			delete(d.files, q)
		}
	}
	for q := range d.dirs {
		if q == fp || strings.HasPrefix(q, fp+"/") {
			delete(d.dirs, q)
		}
	}
	return nil
}

// Stat describes a path.
func (f *Fake) Stat(ctx context.Context, sandboxID, p, user string) (Entry, error) {
	f.count("Stat")
	d, err := f.data("stat path", sandboxID)
	if err != nil {
		return Entry{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := d.entry(fakePath(p))
	if !ok {
		return Entry{}, &Error{Op: "stat path", Class: ErrNotFound, Message: fakePath(p) + ": no such file or directory"}
	}
	return e, nil
}

// SandboxMetrics returns one sample per call made so far, a second apart,
// ending now, filtered by since.
func (f *Fake) SandboxMetrics(ctx context.Context, sandboxID string, since time.Time) ([]MetricSample, error) {
	f.count("SandboxMetrics")
	if _, ok := f.State(sandboxID); !ok {
		return nil, &Error{Op: "get sandbox metrics", Class: ErrNotFound, Message: "sandbox " + sandboxID + " not found"}
	}
	n := f.Calls("SandboxMetrics")
	now := time.Now().UTC()
	out := []MetricSample{}
	for i := n - 1; i >= 0; i-- {
		s := MetricSample{Time: now.Add(-time.Duration(i) * time.Second), CPUPercent: 12.5, MemoryBytes: 64 << 20, DiskBytes: 1 << 20}
		if s.Time.After(since) {
			out = append(out, s)
		}
	}
	return out, nil
}

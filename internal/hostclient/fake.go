package hostclient

import (
	"context"
	"sync"
	"time"
)

// Fake is an in-memory Agent and Dialer for tests: every host it is asked
// for is the same fake. Hooks, when set, run before the default behaviour
// and may fail the call or block it (for shutdown and race tests). It is safe
// for concurrent use.
type Fake struct {
	mu         sync.Mutex
	sandboxes  map[string]Sandbox
	calls      map[string]int
	autoPaused []string
	timeouts   map[string]uint32
	// inside holds processes and files per sandbox (fake_interactive.go).
	inside map[string]*fakeSandboxData

	// OnCreate, OnDestroy and OnExec run first; a non-nil error fails the
	// call with it.
	OnCreate  func(ctx context.Context, req CreateRequest) error
	OnDestroy func(ctx context.Context, sandboxID string) error
	// OnExec, when set, produces the result instead of the default echo of
	// the command line on stdout.
	OnExec func(ctx context.Context, req ExecRequest) (ExecResult, error)
	// OnPause and OnResume run first; a non-nil error fails the call.
	OnPause  func(ctx context.Context, sandboxID string) error
	OnResume func(ctx context.Context, sandboxID string) error
	// OnList, when set, runs first; a non-nil error fails ListSandboxes
	// (an unreachable host).
	OnList func(ctx context.Context) error
}

var (
	_ Agent  = (*Fake)(nil)
	_ Dialer = (*Fake)(nil)
)

// NewFake returns a fake with no sandboxes.
func NewFake() *Fake {
	return &Fake{sandboxes: map[string]Sandbox{}, calls: map[string]int{}, timeouts: map[string]uint32{}}
}

// Agent returns f for every host.
func (f *Fake) Agent(hostID, address string) (Agent, error) { return f, nil }

// Calls returns how many times method (CreateSandbox, DestroySandbox, Exec,
// ListSandboxes, PauseSandbox, ResumeSandbox, PingSandbox,
// SetSandboxTimeout) was called.
func (f *Fake) Calls(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

// Has reports whether the fake host runs sandboxID.
func (f *Fake) Has(sandboxID string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.sandboxes[sandboxID]
	return ok
}

func (f *Fake) count(method string) {
	f.mu.Lock()
	f.calls[method]++
	f.mu.Unlock()
}

// CreateSandbox records the sandbox as running with addresses derived from
// how many it has made.
func (f *Fake) CreateSandbox(ctx context.Context, req CreateRequest) (Sandbox, error) {
	f.count("CreateSandbox")
	if f.OnCreate != nil {
		if err := f.OnCreate(ctx, req); err != nil {
			return Sandbox{}, err
		}
	}
	if err := ctx.Err(); err != nil {
		return Sandbox{}, &Error{Op: "create sandbox", Class: ErrTimeout, Err: err}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.sandboxes[req.SandboxID]; ok {
		return s, nil
	}
	disk := req.DiskMB
	if disk == 0 {
		disk = 1024
	}
	s := Sandbox{
		ID: req.SandboxID, Template: req.Template, State: StateRunning, Runtime: "fake",
		VCPUs: req.VCPUs, MemoryMB: req.MemoryMB, DiskMB: disk,
		HostIP: "10.99.0.1", GuestIP: "10.99.0.2", StartedAt: time.Now().UTC(), EnvdVersion: "fake-1",
	}
	f.sandboxes[req.SandboxID] = s
	return s, nil
}

// DestroySandbox forgets the sandbox; an unknown one is ErrNotFound.
func (f *Fake) DestroySandbox(ctx context.Context, sandboxID string) error {
	f.count("DestroySandbox")
	if f.OnDestroy != nil {
		if err := f.OnDestroy(ctx, sandboxID); err != nil {
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.sandboxes[sandboxID]; !ok {
		return &Error{Op: "destroy sandbox", Class: ErrNotFound, Message: "sandbox " + sandboxID + " not found"}
	}
	delete(f.sandboxes, sandboxID)
	delete(f.timeouts, sandboxID)
	return nil
}

// Exec runs OnExec or, by default, "echoes": stdout is the args joined by
// spaces plus a newline (the cmd itself when there are none).
func (f *Fake) Exec(ctx context.Context, req ExecRequest) (ExecResult, error) {
	f.count("Exec")
	switch st, ok := f.State(req.SandboxID); {
	case !ok:
		return ExecResult{}, &Error{Op: "exec", Class: ErrNotFound, Message: "sandbox " + req.SandboxID + " not found"}
	case st != StateRunning:
		return ExecResult{}, &Error{Op: "exec", Class: ErrConflict, Message: "sandbox " + req.SandboxID + " is " + string(st)}
	}
	if f.OnExec != nil {
		return f.OnExec(ctx, req)
	}
	out := req.Cmd
	if len(req.Args) > 0 {
		out = ""
		for i, a := range req.Args {
			if i > 0 {
				out += " "
			}
			out += a
		}
	}
	return ExecResult{Stdout: []byte(out + "\n"), Stderr: []byte{}, Duration: time.Millisecond}, nil
}

// ListSandboxes returns the fake's sandboxes and, like the real agent, the
// ids it auto-paused since the previous call (each reported once).
func (f *Fake) ListSandboxes(ctx context.Context) (Listing, error) {
	f.count("ListSandboxes")
	if f.OnList != nil {
		if err := f.OnList(ctx); err != nil {
			return Listing{}, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := Listing{Sandboxes: make([]Sandbox, 0, len(f.sandboxes)), AutoPausedIDs: f.autoPaused}
	f.autoPaused = nil
	for _, s := range f.sandboxes {
		out.Sandboxes = append(out.Sandboxes, s)
	}
	return out, nil
}

// State returns what the fake host says about sandboxID, and whether it has
// it at all.
func (f *Fake) State(sandboxID string) (State, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sandboxes[sandboxID]
	return s.State, ok
}

// Timeout returns the inactivity timeout last set for sandboxID.
func (f *Fake) Timeout(sandboxID string) (uint32, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.timeouts[sandboxID]
	return t, ok
}

// AutoPause pauses a running sandbox as the agent does after inactivity and
// reports it in the next ListSandboxes. It returns false when the sandbox
// is not running.
func (f *Fake) AutoPause(sandboxID string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sandboxes[sandboxID]
	if !ok || s.State != StateRunning {
		return false
	}
	s.State = StatePaused
	f.sandboxes[sandboxID] = s
	f.autoPaused = append(f.autoPaused, sandboxID)
	return true
}

// Vanish forgets a sandbox without being asked, as when it died on the host.
func (f *Fake) Vanish(sandboxID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.sandboxes, sandboxID)
}

// transition moves sandboxID from one state to another as the real agent
// does: unknown is ErrNotFound, any other starting state ErrConflict.
func (f *Fake) transition(op, sandboxID string, from, to State) (Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sandboxes[sandboxID]
	if !ok {
		return Sandbox{}, &Error{Op: op, Class: ErrNotFound, Message: "sandbox " + sandboxID + " not found"}
	}
	if s.State != from {
		return Sandbox{}, &Error{Op: op, Class: ErrConflict, Message: "sandbox " + sandboxID + " is " + string(s.State) + ", not " + string(from)}
	}
	s.State = to
	f.sandboxes[sandboxID] = s
	return s, nil
}

// PauseSandbox pauses a running sandbox.
func (f *Fake) PauseSandbox(ctx context.Context, sandboxID string) (Sandbox, error) {
	f.count("PauseSandbox")
	if f.OnPause != nil {
		if err := f.OnPause(ctx, sandboxID); err != nil {
			return Sandbox{}, err
		}
	}
	return f.transition("pause sandbox", sandboxID, StateRunning, StatePaused)
}

// ResumeSandbox resumes a paused sandbox.
func (f *Fake) ResumeSandbox(ctx context.Context, sandboxID string) (Sandbox, error) {
	f.count("ResumeSandbox")
	if f.OnResume != nil {
		if err := f.OnResume(ctx, sandboxID); err != nil {
			return Sandbox{}, err
		}
	}
	return f.transition("resume sandbox", sandboxID, StatePaused, StateRunning)
}

// PingSandbox succeeds for any sandbox the fake has.
func (f *Fake) PingSandbox(ctx context.Context, sandboxID string) error {
	f.count("PingSandbox")
	if _, ok := f.State(sandboxID); !ok {
		return &Error{Op: "ping sandbox", Class: ErrNotFound, Message: "sandbox " + sandboxID + " not found"}
	}
	return nil
}

// SetSandboxTimeout records the timeout of a sandbox the fake has.
func (f *Fake) SetSandboxTimeout(ctx context.Context, sandboxID string, timeoutSec uint32) error {
	f.count("SetSandboxTimeout")
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.sandboxes[sandboxID]; !ok {
		return &Error{Op: "set sandbox timeout", Class: ErrNotFound, Message: "sandbox " + sandboxID + " not found"}
	}
	f.timeouts[sandboxID] = timeoutSec
	return nil
}

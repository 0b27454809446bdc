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
	mu        sync.Mutex
	sandboxes map[string]Sandbox
	calls     map[string]int

	// OnCreate, OnDestroy and OnExec run first; a non-nil error fails the
	// call with it.
	OnCreate  func(ctx context.Context, req CreateRequest) error
	OnDestroy func(ctx context.Context, sandboxID string) error
	// OnExec, when set, produces the result instead of the default echo of
	// the command line on stdout.
	OnExec func(ctx context.Context, req ExecRequest) (ExecResult, error)
}

var (
	_ Agent  = (*Fake)(nil)
	_ Dialer = (*Fake)(nil)
)

// NewFake returns a fake with no sandboxes.
func NewFake() *Fake {
	return &Fake{sandboxes: map[string]Sandbox{}, calls: map[string]int{}}
}

// Agent returns f for every host.
func (f *Fake) Agent(hostID, address string) (Agent, error) { return f, nil }

// Calls returns how many times method (CreateSandbox, DestroySandbox, Exec,
// ListSandboxes) was called.
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
	return nil
}

// Exec runs OnExec or, by default, "echoes": stdout is the args joined by
// spaces plus a newline (the cmd itself when there are none).
func (f *Fake) Exec(ctx context.Context, req ExecRequest) (ExecResult, error) {
	f.count("Exec")
	if !f.Has(req.SandboxID) {
		return ExecResult{}, &Error{Op: "exec", Class: ErrNotFound, Message: "sandbox " + req.SandboxID + " not found"}
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

// ListSandboxes returns the fake's sandboxes.
func (f *Fake) ListSandboxes(ctx context.Context) ([]Sandbox, error) {
	f.count("ListSandboxes")
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Sandbox, 0, len(f.sandboxes))
	for _, s := range f.sandboxes {
		out = append(out, s)
	}
	return out, nil
}

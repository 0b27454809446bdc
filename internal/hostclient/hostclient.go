// Package hostclient is how the control plane talks to host agents: a small
// Agent interface in the control plane's own terms, a Connect implementation
// over HTTP/1.1 with a pooled transport of its own, and a hand-written Fake
// for tests. Nothing outside this package sees generated protobuf types or
// Connect codes.
package hostclient

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Agent is one host agent as the control plane uses it.
type Agent interface {
	// CreateSandbox boots a sandbox and returns once it answers. Creating an
	// id that exists returns the existing sandbox.
	CreateSandbox(ctx context.Context, req CreateRequest) (Sandbox, error)
	// DestroySandbox stops a sandbox and releases what it took; an unknown
	// id is an error matching ErrNotFound.
	DestroySandbox(ctx context.Context, sandboxID string) error
	// Exec runs one command to completion.
	Exec(ctx context.Context, req ExecRequest) (ExecResult, error)
	// ListSandboxes returns what runs on the host: the truth the control
	// plane reconciles against.
	ListSandboxes(ctx context.Context) (Listing, error)
	// PauseSandbox freezes a running sandbox, keeping memory and disk. A
	// sandbox that is not running is an error matching ErrConflict.
	PauseSandbox(ctx context.Context, sandboxID string) (Sandbox, error)
	// ResumeSandbox thaws a paused sandbox and returns once envd answers. A
	// sandbox that is not paused is an error matching ErrConflict.
	ResumeSandbox(ctx context.Context, sandboxID string) (Sandbox, error)
	// PingSandbox counts as activity: it restarts the inactivity timer.
	PingSandbox(ctx context.Context, sandboxID string) error
	// SetSandboxTimeout replaces the inactivity timeout (0: never
	// auto-pause) and restarts the timer.
	SetSandboxTimeout(ctx context.Context, sandboxID string, timeoutSec uint32) error
	// Interactive holds the process, terminal, file and metrics calls.
	Interactive
}

// Listing is a host's live sandbox list. AutoPausedIDs names the sandboxes
// the agent paused for inactivity since its previous answer, so the monitor
// can tell an auto-pause it missed from a sandbox that vanished.
type Listing struct {
	Sandboxes     []Sandbox
	AutoPausedIDs []string
}

// Dialer returns the Agent of a host. Implementations cache one client per
// host, so callers ask for it on every operation.
type Dialer interface {
	Agent(hostID, address string) (Agent, error)
}

// CreateRequest asks for a new sandbox.
type CreateRequest struct {
	SandboxID  string
	Template   string
	VCPUs      uint32
	MemoryMB   uint32
	DiskMB     uint64 // 0: the agent's default
	TimeoutSec uint32
	Envs       map[string]string
	// AllowInternet lets the sandbox reach the internet through NAT.
	AllowInternet bool
}

// Sandbox is a sandbox as its host reports it.
type Sandbox struct {
	ID          string
	Template    string
	State       State
	Runtime     string
	VCPUs       uint32
	MemoryMB    uint32
	DiskMB      uint64
	HostIP      string
	GuestIP     string
	StartedAt   time.Time
	EnvdVersion string
}

// State is what a host says about one of its sandboxes.
type State string

// States an agent reports.
const (
	StateUnknown State = "unknown"
	StateRunning State = "running"
	StatePaused  State = "paused"
	StateStopped State = "stopped"
)

// ExecRequest runs Cmd with Args (no shell) in a sandbox.
type ExecRequest struct {
	SandboxID  string
	Cmd        string
	Args       []string
	Env        map[string]string
	Cwd        string
	User       string
	TimeoutSec uint32 // 0: the agent's default
	Stdin      []byte
}

// ExecResult is a finished command's collected output.
type ExecResult struct {
	Stdout   []byte
	Stderr   []byte
	ExitCode int
	TimedOut bool
	Duration time.Duration
}

// Error classes of agent failures. Errors returned by an Agent match one of
// them with errors.Is, so callers map them to HTTP without knowing Connect.
var (
	// ErrNotFound: the host does not have the sandbox.
	ErrNotFound = errors.New("not found on the host")
	// ErrConflict: the sandbox is not in a state that allows the call.
	ErrConflict = errors.New("refused in the sandbox's current state")
	// ErrInvalid: the agent rejected the request's arguments.
	ErrInvalid = errors.New("rejected by the host")
	// ErrUnavailable: the host could not be reached or is overloaded.
	ErrUnavailable = errors.New("host unavailable")
	// ErrTimeout: the call ran out of time.
	ErrTimeout = errors.New("host did not answer in time")
	// ErrInternal: anything else the agent reported.
	ErrInternal = errors.New("host agent failed")
)

// Error is an agent failure: Class is one of the Err* values above, Message
// is what the agent said (safe to show only for ErrInvalid and ErrConflict,
// which describe the caller's request), Err is the underlying error.
type Error struct {
	Op      string
	Class   error
	Message string
	Err     error
}

func (e *Error) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("host agent %s: %v: %s", e.Op, e.Class, e.Message)
	}
	return fmt.Sprintf("host agent %s: %v", e.Op, e.Class)
}

// Is makes errors.Is(err, ErrNotFound) and friends work.
func (e *Error) Is(target error) bool { return target == e.Class }

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

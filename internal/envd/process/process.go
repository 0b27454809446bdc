// Package process runs and tracks the commands envd starts inside a sandbox.
//
// A process belongs to the Manager, not to the request that started it: a
// client's stream ending, timing out or disconnecting only removes that
// client's subscription. The process is untracked once it has exited and the
// end event has been handed to every subscriber, so a client may re-attach by
// pid or tag at any time before that and receive the output that follows and
// the end event.
//
// Output is fanned out to subscribers through buffered channels. A subscriber
// that stops draining its channel slows the process down (its pipe fills)
// rather than losing bytes; a subscriber that goes away stops counting at once.
// With no subscriber at all output is read and discarded, so an unwatched
// process never blocks on a full pipe.
package process

import (
	"errors"
	"time"
)

// Error classes returned (wrapped) by this package. The RPC layer maps them
// to Connect codes once; the wrapped message is written for the client.
var (
	// ErrNotFound: no tracked process matches the selector.
	ErrNotFound = errors.New("process not found")
	// ErrInvalid: the request cannot be run as given (empty command, missing
	// executable, bad working directory).
	ErrInvalid = errors.New("invalid process request")
	// ErrConflict: another running process already holds the tag.
	ErrConflict = errors.New("conflict")
	// ErrPrecondition: the operation does not fit the process (input to a
	// process started without stdin, resizing a process without a PTY).
	ErrPrecondition = errors.New("precondition failed")
	// ErrPermission: envd lacks the privilege to do what was asked.
	ErrPermission = errors.New("permission denied")
	// ErrClosed: the manager is shutting down and starts nothing new.
	ErrClosed = errors.New("process manager closed")
)

// Stream says where a chunk of output came from.
type Stream int

// Output streams. A process with a PTY has one merged stream.
const (
	Stdout Stream = iota + 1
	Stderr
	PTY
)

// Event is one item of a process's output. Exactly one of Data (with Stream)
// or End is set. Data is shared between subscribers and must not be modified.
type Event struct {
	Stream Stream
	Data   []byte
	End    *End
}

// End describes how a process finished, in the terms Go's os.ProcessState
// uses: ExitCode is -1 when a signal ended it, Status reads "exit status 3"
// or "signal: killed", and Error carries a failure to wait for it, if any.
type End struct {
	ExitCode int
	Exited   bool
	Status   string
	Error    string
}

// Size is a terminal size in character cells.
type Size struct {
	Cols uint16
	Rows uint16
}

// Credential is the identity a process runs as. Nil in a Spec means envd's
// own identity.
type Credential struct {
	UID    uint32
	GID    uint32
	Groups []uint32
}

// Spec is everything needed to start a process. Env is the complete
// environment; Dir must be an absolute, existing directory.
type Spec struct {
	Cmd   string
	Args  []string
	Env   []string
	Dir   string
	Cred  *Credential
	Tag   string // optional, unique among running processes
	Stdin bool   // keep stdin open for input; otherwise it is /dev/null
	PTY   *Size  // run on a new pseudo-terminal of this size
	// Envs is the environment as the client gave it, reported back by List.
	Envs map[string]string
}

// Options tunes a Manager. Zero values pick the defaults.
type Options struct {
	// Buffer is the per-subscriber event buffer (default 256).
	Buffer int
	// DrainGrace bounds how long output is still read after the process
	// exited, for descendants that keep its stdout open (default 1 s).
	DrainGrace time.Duration
	// OOMScoreAdj is written to each child's oom_score_adj so the kernel
	// prefers a runaway command over envd. Nil leaves the inherited value.
	OOMScoreAdj *int
	// Cgroup, when set, receives every started process (commands and PTYs
	// alike) right after it started, so user workloads can be accounted,
	// limited and killed apart from envd. A failure is logged, not fatal:
	// the process keeps running in envd's cgroup.
	Cgroup Cgroup
}

// Cgroup is where started processes are moved; *cgroup.Group implements it.
type Cgroup interface {
	Add(pid int) error
}

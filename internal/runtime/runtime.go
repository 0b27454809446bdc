// Package runtime defines what the host agent needs from a sandbox runtime
// (runc, runsc, qemu, firecracker). Drivers implement Runtime and pass the one
// conformance suite; the agent composes them with images and networking, so a
// driver only starts, stops, freezes and measures the sandbox's processes.
package runtime

import (
	"context"
	"errors"
	"time"
)

// Errors a driver returns, wrapped with %w, so callers branch with errors.Is.
var (
	// ErrNotFound means the runtime has no sandbox with that id.
	ErrNotFound = errors.New("sandbox not found in runtime")
	// ErrUnavailable means the runtime cannot run on this host (binary or
	// kernel feature missing); the message says which.
	ErrUnavailable = errors.New("runtime unavailable")
)

// Spec is everything a driver needs to start one sandbox. The agent has
// already prepared RootFS (a mounted copy-on-write view of the template) and
// NetNSPath (a network namespace wired to the host).
type Spec struct {
	// ID is the sandbox id (sb-…); drivers use it to name their own objects.
	ID string
	// StateDir is a directory owned by this sandbox for the driver's files
	// (OCI bundle, logs, sockets). It exists and is removed by the agent.
	StateDir string
	// RootFS is the path of the sandbox's mounted root filesystem.
	RootFS string
	// NetNSPath is the network namespace the sandbox joins, e.g.
	// /var/run/netns/wrenn-sb-….
	NetNSPath string
	Hostname  string
	// Args is the sandbox's first process (its init), e.g.
	// ["/usr/local/bin/wrenn-init"].
	Args []string
	// Env is the init's environment as KEY=VALUE.
	Env []string
	// VCPUs becomes a CPU quota of VCPUs cores.
	VCPUs uint32
	// MemoryMB is a hard memory limit (swap included).
	MemoryMB uint32
	// Pids caps the number of tasks in the sandbox.
	Pids int64
}

// State is what a runtime says about one of its sandboxes.
type State string

// The states a driver reports.
const (
	StateRunning State = "running"
	StatePaused  State = "paused"
	StateStopped State = "stopped"
)

// Stats is a point-in-time sample of a sandbox's resource use.
type Stats struct {
	CPUUsage    time.Duration // cumulative CPU time
	MemoryBytes uint64
	Pids        uint64
}

// Runtime starts and controls sandboxes. Every method is safe for concurrent
// use on different ids; the agent serialises operations on one id.
type Runtime interface {
	// Name is the runtime's name as WRENN_RUNTIME spells it.
	Name() string
	// Create starts the sandbox's init and returns once it runs. On error
	// nothing of the sandbox is left in the runtime.
	Create(ctx context.Context, spec Spec) error
	// Pause freezes every process of the sandbox; Resume thaws them.
	Pause(ctx context.Context, id string) error
	Resume(ctx context.Context, id string) error
	// Destroy kills and removes the sandbox. An id the runtime does not know
	// is not an error, so Destroy can run on every cleanup path.
	Destroy(ctx context.Context, id string) error
	// State reports the sandbox's state, or ErrNotFound.
	State(ctx context.Context, id string) (State, error)
	// Stats samples the sandbox's resource use, or ErrNotFound.
	Stats(ctx context.Context, id string) (Stats, error)
	// List returns the ids of every sandbox the runtime has on this host,
	// including ones a previous agent left, for re-adoption and cleanup.
	List(ctx context.Context) ([]string, error)
}

package hostclient

import (
	"context"
	"errors"
	"io"
	"time"
)

// Interactive is the part of an Agent that works inside a running sandbox:
// processes, terminals, files and metrics. Every call on a sandbox that is
// not running fails with ErrConflict; an unknown sandbox, process or path
// with ErrNotFound.
type Interactive interface {
	// StartProcess starts a process (a terminal when req.PTY is set) and
	// streams its events; the first is EventStart with the pid. Closing
	// the stream leaves the process running.
	StartProcess(ctx context.Context, req ProcessRequest) (ProcessStream, error)
	// StartBackground starts a process and returns once it runs.
	StartBackground(ctx context.Context, req ProcessRequest) (ProcessInfo, error)
	ListProcesses(ctx context.Context, sandboxID string) ([]ProcessInfo, error)
	// AttachProcess streams a running process's events from now on.
	AttachProcess(ctx context.Context, sandboxID string, p Selector) (ProcessStream, error)
	// SignalProcess sends SignalTerm or SignalKill.
	SignalProcess(ctx context.Context, sandboxID string, p Selector, sig Signal) error
	// SendInput writes to the process's stdin, or its terminal when pty.
	SendInput(ctx context.Context, sandboxID string, p Selector, data []byte, pty bool) error
	CloseStdin(ctx context.Context, sandboxID string, p Selector) error
	ResizePTY(ctx context.Context, sandboxID string, p Selector, cols, rows uint32) error

	// ReadFile streams a file; the caller closes the reader. Size is -1
	// when unknown.
	ReadFile(ctx context.Context, sandboxID, path, user string) (rc io.ReadCloser, size int64, err error)
	// WriteFile streams r into a file (size -1 when unknown), creating
	// parent directories and replacing what was there.
	WriteFile(ctx context.Context, sandboxID, path, user string, r io.Reader, size int64) error
	ListDir(ctx context.Context, sandboxID, path, user string, depth uint32) ([]Entry, error)
	MakeDir(ctx context.Context, sandboxID, path, user string) (Entry, error)
	Remove(ctx context.Context, sandboxID, path, user string) error
	Stat(ctx context.Context, sandboxID, path, user string) (Entry, error)

	// SandboxMetrics returns the samples taken after since, oldest first.
	SandboxMetrics(ctx context.Context, sandboxID string, since time.Time) ([]MetricSample, error)
}

// ProcessRequest starts Cmd with Args (no shell) in a sandbox.
type ProcessRequest struct {
	SandboxID string
	Cmd       string
	Args      []string
	Env       map[string]string
	Cwd       string
	User      string
	Tag       string
	// Stdin keeps stdin open for SendInput until CloseStdin.
	Stdin bool
	// PTY, when set, runs the process on a terminal of that size.
	PTY *PTYSize
}

// PTYSize is a terminal's size in cells.
type PTYSize struct{ Cols, Rows uint32 }

// Selector names a process by PID or, when PID is 0, by Tag.
type Selector struct {
	PID uint32
	Tag string
}

// Signal is a signal a process can be sent.
type Signal string

// The signals envd delivers.
const (
	SignalTerm Signal = "SIGTERM"
	SignalKill Signal = "SIGKILL"
)

// ProcessInfo is a process the sandbox's envd runs.
type ProcessInfo struct {
	PID  uint32   `json:"pid"`
	Tag  string   `json:"tag,omitempty"`
	Cmd  string   `json:"cmd,omitempty"`
	Args []string `json:"args,omitempty"`
	Cwd  string   `json:"cwd,omitempty"`
}

// EventKind tells what a ProcessEvent carries.
type EventKind int

// Kinds of process events.
const (
	EventStart EventKind = iota + 1
	EventStdout
	EventStderr
	EventPTY
	EventEnd
)

// ProcessEvent is one event of a process stream.
type ProcessEvent struct {
	Kind EventKind
	// PID is set on EventStart.
	PID uint32
	// Data is set on EventStdout, EventStderr and EventPTY.
	Data []byte
	// ExitCode, Exited (false when a signal ended it), Status and Error are
	// set on EventEnd.
	ExitCode int
	Exited   bool
	Status   string
	Error    string
}

// ProcessStream is a stream of a process's events.
type ProcessStream interface {
	// Recv returns the next event; after EventEnd it returns io.EOF. A
	// stream cut before the end returns another error.
	Recv() (ProcessEvent, error)
	// Close ends the stream; the process keeps running.
	Close() error
}

// ErrNoSpace: the sandbox's disk is full (a write inside it failed with
// ENOSPC). It is never the class of an *Error from the lifecycle calls.
var ErrNoSpace = errors.New("the sandbox's disk is full")

// ErrStreamCut is returned by Recv when a stream ended before its process
// did (the sandbox was paused or the host went away).
var ErrStreamCut = errors.New("process stream ended before the process")

// EntryType is the type of a filesystem entry.
type EntryType string

// Entry types.
const (
	EntryFile    EntryType = "file"
	EntryDir     EntryType = "dir"
	EntrySymlink EntryType = "symlink"
	EntryOther   EntryType = "other"
)

// Entry describes a file, directory or symlink inside a sandbox.
type Entry struct {
	Name          string    `json:"name"`
	Path          string    `json:"path"`
	Type          EntryType `json:"type"`
	Size          int64     `json:"size"`
	Mode          uint32    `json:"mode"`
	Owner         string    `json:"owner"`
	Group         string    `json:"group"`
	ModifiedAt    time.Time `json:"modified_at"`
	SymlinkTarget string    `json:"symlink_target,omitempty"`
}

// MetricSample is one measurement of a sandbox's resource use.
type MetricSample struct {
	Time time.Time `json:"time"`
	// CPUPercent is the share of one core used since the previous sample.
	CPUPercent  float64 `json:"cpu_percent"`
	MemoryBytes uint64  `json:"memory_bytes"`
	DiskBytes   uint64  `json:"disk_bytes"`
}

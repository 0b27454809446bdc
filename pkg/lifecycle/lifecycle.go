// Package lifecycle is the sandbox state machine as data: the statuses, which
// transitions are allowed, and a typed error for a refused one. It imports no
// storage or transport so every writer (API handlers, background workers, the
// event consumer, the host monitor) applies the same rules.
package lifecycle

import (
	"fmt"
	"strings"
)

// Status is a sandbox's lifecycle status as stored and shown to users.
type Status string

// The statuses of DESIGN.md §2.
const (
	Starting     Status = "starting"
	Running      Status = "running"
	Pausing      Status = "pausing"
	Paused       Status = "paused"
	Resuming     Status = "resuming"
	Stopping     Status = "stopping"
	Stopped      Status = "stopped"
	Error        Status = "error"
	Missing      Status = "missing"
	Snapshotting Status = "snapshotting"
)

// All lists every status, in lifecycle order.
var All = []Status{Starting, Running, Pausing, Paused, Resuming, Stopping, Stopped, Error, Missing, Snapshotting}

// transitions is the whole state machine: from → allowed targets. Failure
// edges return to the truthful state (pausing → running after a failed
// pause, resuming → paused after a failed resume). Every non-terminal status
// may become stopped or error, because the host can lose a sandbox at any
// time (it died, the agent says so, or the monitor finds it gone); missing
// may be restored to whatever the host reports when it returns, and the
// monitor settles a stuck transient status to what the host reports.
var transitions = map[Status][]Status{
	Starting:     {Running, Stopping, Stopped, Error, Missing},
	Running:      {Pausing, Stopping, Snapshotting, Stopped, Paused, Error, Missing},
	Pausing:      {Paused, Running, Stopping, Stopped, Error, Missing},
	Paused:       {Resuming, Stopping, Stopped, Error, Missing},
	Resuming:     {Running, Paused, Stopping, Stopped, Error, Missing},
	Stopping:     {Stopped, Error, Missing},
	Stopped:      {},
	Error:        {Stopping, Stopped},
	Missing:      {Running, Paused, Stopped, Error, Stopping},
	Snapshotting: {Running, Paused, Stopped, Error, Missing},
}

// Valid reports whether s is a known status.
func (s Status) Valid() bool {
	_, ok := transitions[s]
	return ok
}

// Transient reports whether s is an in-between status that background work
// or the host monitor must settle.
func (s Status) Transient() bool {
	switch s {
	case Starting, Pausing, Resuming, Stopping, Snapshotting:
		return true
	}
	return false
}

// Terminal reports whether nothing can follow s.
func (s Status) Terminal() bool { return s.Valid() && len(transitions[s]) == 0 }

// Parse returns s as a Status, or an error when it is not one.
func Parse(s string) (Status, error) {
	st := Status(s)
	if !st.Valid() {
		names := make([]string, len(All))
		for i, a := range All {
			names[i] = string(a)
		}
		return "", fmt.Errorf("unknown sandbox status %q (one of %s)", s, strings.Join(names, ", "))
	}
	return st, nil
}

// Allowed reports whether from → to is a transition of the state machine.
func Allowed(from, to Status) bool {
	for _, t := range transitions[from] {
		if t == to {
			return true
		}
	}
	return false
}

// Check returns nil when from → to is allowed, else a *TransitionError.
func Check(from, to Status) error {
	if Allowed(from, to) {
		return nil
	}
	return &TransitionError{From: from, To: to}
}

// TransitionError is a refused transition. Handlers map it to 409 Conflict;
// its message is written for users.
type TransitionError struct {
	From, To Status
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("sandbox is %s and cannot become %s", e.From, e.To)
}

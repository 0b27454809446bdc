package lifecycle

import (
	"errors"
	"testing"
)

func TestTable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		from, to Status
		ok       bool
	}{
		{Starting, Running, true},
		{Starting, Error, true},
		{Starting, Stopping, true},
		{Running, Pausing, true},
		{Pausing, Running, true}, // failed pause goes back
		{Resuming, Paused, true}, // failed resume goes back
		{Running, Stopping, true},
		{Error, Stopping, true},
		{Stopping, Stopped, true},
		{Stopped, Running, false},
		{Stopped, Stopping, false},
		{Stopping, Running, false},
		{Paused, Running, false}, // only through resuming
		{Starting, Paused, false},
		{Running, Running, false},
		// The host lost it: every non-terminal status may become stopped
		// (agent "died" callbacks, the monitor).
		{Starting, Stopped, true},
		{Pausing, Stopped, true},
		{Paused, Stopped, true},
		{Resuming, Stopped, true},
		{Snapshotting, Stopped, true},
		{Snapshotting, Paused, true},
		{Missing, Running, true}, // restored when the host returns
		{Missing, Paused, true},
		{Error, Error, false},
	}
	for _, tc := range tests {
		t.Run(string(tc.from)+"->"+string(tc.to), func(t *testing.T) {
			t.Parallel()
			err := Check(tc.from, tc.to)
			if tc.ok != (err == nil) {
				t.Fatalf("Check = %v, want allowed=%v", err, tc.ok)
			}
			var te *TransitionError
			if err != nil && (!errors.As(err, &te) || te.From != tc.from || te.To != tc.to) {
				t.Fatalf("error %v is not a TransitionError for the pair", err)
			}
		})
	}
}

// Every target in the table is itself a known status, every non-terminal
// status can reach stopped, and only stopped is terminal.
func TestTableIsClosed(t *testing.T) {
	t.Parallel()
	for _, s := range All {
		for _, to := range transitions[s] {
			if !to.Valid() {
				t.Errorf("%s -> unknown %q", s, to)
			}
		}
		if s.Terminal() != (s == Stopped) {
			t.Errorf("%s terminal = %v", s, s.Terminal())
		}
		if !reaches(s, Stopped, map[Status]bool{}) {
			t.Errorf("%s cannot reach stopped", s)
		}
	}
	if len(All) != len(transitions) {
		t.Errorf("All has %d statuses, table %d", len(All), len(transitions))
	}
	for _, s := range All {
		if s.Terminal() {
			continue
		}
		if !Allowed(s, Stopped) && s != Stopping && s != Error {
			t.Errorf("%s cannot become stopped directly", s)
		}
	}
	if _, err := Parse("bogus"); err == nil {
		t.Error("Parse accepted bogus")
	}
}

func reaches(from, to Status, seen map[Status]bool) bool {
	if from == to {
		return true
	}
	seen[from] = true
	for _, n := range transitions[from] {
		if !seen[n] && reaches(n, to, seen) {
			return true
		}
	}
	return false
}

package oci

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/wrenn/wrenn/internal/runtime"
	"github.com/wrenn/wrenn/internal/runtime/cgroups"
)

// listRunner answers every command with a fixed `list` output and records
// the subcommands it was asked for.
type listRunner struct {
	out  string
	seen []string
}

func (r *listRunner) Run(_ context.Context, c Cmd) ([]byte, error) {
	for i, a := range c.Args {
		if a == "list" || a == "state" {
			r.seen = append(r.seen, c.Args[i])
		}
	}
	return []byte(r.out), nil
}

func TestStatesFromOneList(t *testing.T) {
	t.Parallel()
	cg, err := cgroups.Parse("/", strings.NewReader("31 30 0:27 / /cpu rw - cgroup cgroup rw,cpu\n"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		out  string
		want map[string]runtime.State
	}{
		{"none", "null", map[string]runtime.State{}},
		{"every status", `[{"id":"sb-a","pid":10,"status":"running"},{"id":"sb-b","pid":11,"status":"paused"},
			{"id":"sb-c","pid":0,"status":"stopped"},{"id":"sb-d","pid":12,"status":"created"},{"id":"sb-e","pid":13,"status":"pausing"},
			{"id":"sb-f","pid":14,"status":"odd"}]`,
			map[string]runtime.State{"sb-a": runtime.StateRunning, "sb-b": runtime.StatePaused, "sb-c": runtime.StateStopped,
				"sb-d": runtime.StateStopped, "sb-e": runtime.StatePaused, "sb-f": "odd"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := &listRunner{out: tt.out}
			d, err := New(Config{Binary: "runc", Root: "/run/wrenn-test/runc", Runner: r, Cgroups: cg})
			if err != nil {
				t.Fatal(err)
			}
			got, err := d.States(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Errorf("States() = %v, want %v", got, tt.want)
			}
			for id, st := range tt.want {
				if got[id] != st {
					t.Errorf("state of %s = %q, want %q", id, got[id], st)
				}
			}
			if !slices.Equal(r.seen, []string{"list"}) {
				t.Errorf("commands %v, want one list", r.seen)
			}
		})
	}
}

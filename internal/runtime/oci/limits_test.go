package oci

import (
	"testing"
)

func TestHostPids(t *testing.T) {
	t.Parallel()
	runc := &Driver{cfg: Config{}}
	runsc := &Driver{cfg: Config{PidsOverhead: RunscPidsOverhead, PidsPerTask: RunscPidsPerTask, HostPidsCap: RunscHostPidsCap}}
	uncapped := &Driver{cfg: Config{PidsOverhead: 10, PidsPerTask: 3}}
	tests := []struct {
		name string
		d    *Driver
		pids int64
		want int64
	}{
		{"runc: the limit itself", runc, 64, 64},
		{"no limit stays none", runsc, 0, 0},
		{"gVisor: room per guest task", runsc, 64, 64*RunscPidsPerTask + RunscPidsOverhead},
		{"gVisor: capped", runsc, 1024, RunscHostPidsCap + RunscPidsOverhead},
		{"gVisor: a limit above the cap is its own cap", runsc, 8192, 8192 + RunscPidsOverhead},
		{"no cap", uncapped, 5000, 5000*3 + 10},
	}
	for _, tt := range tests {
		if got := tt.d.HostPids(tt.pids); got != tt.want {
			t.Errorf("%s: HostPids(%d) = %d, want %d", tt.name, tt.pids, got, tt.want)
		}
	}
}

func TestGuestPids(t *testing.T) {
	t.Parallel()
	runc := &Driver{cfg: Config{}}
	runsc := &Driver{cfg: Config{PidsOverhead: RunscPidsOverhead, PidsPerTask: RunscPidsPerTask, HostPidsCap: RunscHostPidsCap}}
	tests := []struct {
		name string
		d    *Driver
		pids int64
		want int64
	}{
		{"runc: the host kernel enforces it", runc, 64, 0},
		{"no limit", runsc, 0, 0},
		{"gVisor: room for every task", runsc, 64, 64},
		{"gVisor: just at the cap", runsc, RunscHostPidsCap / RunscPidsPerTask, RunscHostPidsCap / RunscPidsPerTask},
		{"gVisor: the agent's 4096 is cut to what the capped room holds", runsc, 4096, RunscHostPidsCap / RunscPidsPerTask},
		{"gVisor: above the cap", runsc, 8192, 8192 / RunscPidsPerTask},
	}
	for _, tt := range tests {
		got := tt.d.GuestPids(tt.pids)
		if got != tt.want {
			t.Errorf("%s: GuestPids(%d) = %d, want %d", tt.name, tt.pids, got, tt.want)
		}
		// At PidsPerTask each, the guest's limit fits the host's room.
		if room := tt.d.HostPids(tt.pids) - tt.d.cfg.PidsOverhead; got > 0 && got*tt.d.cfg.PidsPerTask > room {
			t.Errorf("%s: %d guest tasks do not fit %d host tasks", tt.name, got, room)
		}
	}
}

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

package scheduler

import (
	"errors"
	"testing"
)

func TestFits(t *testing.T) {
	t.Parallel()
	host := Host{ID: "h", Capacity: Resources{VCPUs: 4, MemoryMB: 8192, DiskMB: 10000}}
	used := func(cpu, mem, disk float64) Host {
		h := host
		h.Used = Resources{cpu, mem, disk}
		return h
	}
	tests := []struct {
		name string
		h    Host
		req  Resources
		want bool
	}{
		{"empty host", host, Resources{1, 512, 1024}, true},
		{"CPU up to 1.5x", used(5, 0, 0), Resources{1, 512, 1024}, true},
		{"CPU past 1.5x", used(5.5, 0, 0), Resources{1, 512, 1024}, false},
		{"memory exactly full", used(0, 7680, 0), Resources{1, 512, 1024}, true},
		{"memory is hard", used(0, 7681, 0), Resources{1, 512, 1024}, false},
		{"disk is hard", used(0, 0, 9500), Resources{1, 512, 1024}, false},
		{"unreported capacity is unlimited", Host{ID: "u"}, Resources{64, 1 << 20, 1 << 30}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := DefaultPolicy.Fits(tc.h, tc.req); got != tc.want {
				t.Errorf("Fits = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestMemoryOvercommit(t *testing.T) {
	t.Parallel()
	// 188 sandboxes of 128 MiB fill 24 GiB at their limits; 4x takes 752.
	host := Host{ID: "h", Capacity: Resources{VCPUs: 200, MemoryMB: 24 << 10, DiskMB: 1 << 30}}
	req := Resources{VCPUs: 0.1, MemoryMB: 128, DiskMB: 256}
	for _, tc := range []struct {
		name string
		oc   float64
		want int
	}{{"unset is 1", 0, 192}, {"1", 1, 192}, {"4", 4, 768}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := DefaultPolicy
			p.MemoryOvercommit = tc.oc
			h, n := host, 0
			for p.Fits(h, req) {
				h.Used = h.Used.add(req)
				n++
			}
			if n != tc.want {
				t.Errorf("%d sandboxes admitted, want %d", n, tc.want)
			}
		})
	}
}

func TestPausedCountsPartly(t *testing.T) {
	t.Parallel()
	r := Resources{VCPUs: 2, MemoryMB: 1000, DiskMB: 2000}
	if got := DefaultPolicy.Use(r, false); got != r {
		t.Errorf("running use %+v", got)
	}
	if got := DefaultPolicy.Use(r, true); got != (Resources{0, 500, 2000}) {
		t.Errorf("paused use %+v", got)
	}
}

func TestPick(t *testing.T) {
	t.Parallel()
	req := Resources{VCPUs: 1, MemoryMB: 1024, DiskMB: 1024}
	full := Host{ID: "a-full", Capacity: Resources{8, 4096, 100000}, Used: Resources{1, 3584, 0}, Sandboxes: 1}
	busy := Host{ID: "b-busy", Capacity: Resources{8, 16384, 100000}, Used: Resources{4, 8192, 0}, Sandboxes: 4}
	idle := Host{ID: "c-idle", Capacity: Resources{8, 16384, 100000}, Sandboxes: 0}
	idle2 := Host{ID: "d-idle", Capacity: Resources{8, 16384, 100000}, Sandboxes: 0}
	got, err := DefaultPolicy.Pick([]Host{full, busy, idle2, idle}, req)
	if err != nil || got.ID != "c-idle" {
		t.Errorf("Pick = %s, %v; want c-idle (least loaded, then lowest id)", got.ID, err)
	}
	got, err = DefaultPolicy.Pick([]Host{full, busy}, req)
	if err != nil || got.ID != "b-busy" {
		t.Errorf("Pick = %s, %v; want b-busy (the only fit)", got.ID, err)
	}
	if _, err := DefaultPolicy.Pick([]Host{full}, req); !errors.Is(err, ErrNoCapacity) {
		t.Errorf("Pick on full hosts: %v", err)
	}
	if _, err := DefaultPolicy.Pick(nil, req); !errors.Is(err, ErrNoCapacity) {
		t.Errorf("Pick on no hosts: %v", err)
	}
}

// Package scheduler places sandboxes on hosts: admission control (does the
// sandbox fit?) and least-loaded choice among the hosts where it does. It is
// pure: callers read capacity and use from storage (under a lock, so two
// placements cannot both take the last room) and record the choice.
package scheduler

import (
	"errors"
	"fmt"
	"sort"
)

// ErrNoCapacity: no candidate host has room for the request.
var ErrNoCapacity = errors.New("no host has room for the sandbox")

// Resources is an amount of CPU, memory and disk. CPU is fractional because
// paused sandboxes count only a share of theirs.
type Resources struct {
	VCPUs    float64
	MemoryMB float64
	DiskMB   float64
}

func (r Resources) add(o Resources) Resources {
	return Resources{VCPUs: r.VCPUs + o.VCPUs, MemoryMB: r.MemoryMB + o.MemoryMB, DiskMB: r.DiskMB + o.DiskMB}
}

// Host is a candidate: its capacity as the agent reported it (0 in a
// dimension means the agent did not report it, which leaves that dimension
// unlimited) and what its sandboxes take, already weighted by Policy.Use.
type Host struct {
	ID        string
	Capacity  Resources
	Used      Resources
	Sandboxes int
}

// Policy is the admission rule.
type Policy struct {
	// CPUOvercommit multiplies a host's vCPUs: sandboxes rarely use all
	// their CPU, and CPU contention slows rather than kills.
	CPUOvercommit float64
	// MemoryOvercommit multiplies a host's memory; 0 means 1. A sandbox's
	// memory is a cgroup limit, not a reservation: idle sandboxes use a few
	// MiB of it, so hosts of many idle sandboxes can take more than the sum
	// of their limits fits. Past the host's real memory the kernel reclaims
	// and, at worst, OOM-kills inside the sandboxes that grew.
	MemoryOvercommit float64
	// PausedCPUShare and PausedMemoryShare are how much of a paused
	// sandbox's CPU and memory still counts. A frozen sandbox uses no CPU;
	// its memory is released by snapshotting runtimes but kept by freezer
	// ones, so it counts in part. Disk always counts in full.
	PausedCPUShare    float64
	PausedMemoryShare float64
}

// DefaultPolicy: memory and disk are hard limits, CPU is overcommitted
// 1.5×, paused sandboxes count no CPU and half their memory.
var DefaultPolicy = Policy{CPUOvercommit: 1.5, MemoryOvercommit: 1, PausedCPUShare: 0, PausedMemoryShare: 0.5}

// memoryCapacity is h's memory as the policy admits it.
func (p Policy) memoryCapacity(h Host) float64 {
	if p.MemoryOvercommit <= 0 {
		return h.Capacity.MemoryMB
	}
	return h.Capacity.MemoryMB * p.MemoryOvercommit
}

// Use is what a sandbox of size r takes from its host's capacity.
func (p Policy) Use(r Resources, paused bool) Resources {
	if !paused {
		return r
	}
	return Resources{VCPUs: r.VCPUs * p.PausedCPUShare, MemoryMB: r.MemoryMB * p.PausedMemoryShare, DiskMB: r.DiskMB}
}

// Fits reports whether req fits on h.
func (p Policy) Fits(h Host, req Resources) bool {
	after := h.Used.add(req)
	return within(after.VCPUs, h.Capacity.VCPUs*p.CPUOvercommit) &&
		within(after.MemoryMB, p.memoryCapacity(h)) &&
		within(after.DiskMB, h.Capacity.DiskMB)
}

func within(use, capacity float64) bool { return capacity <= 0 || use <= capacity }

// load is h's fullest dimension after placing req, as a fraction of its
// (overcommitted) capacity.
func (p Policy) load(h Host, req Resources) float64 {
	after := h.Used.add(req)
	l := 0.0
	for _, d := range [][2]float64{
		{after.VCPUs, h.Capacity.VCPUs * p.CPUOvercommit},
		{after.MemoryMB, p.memoryCapacity(h)},
		{after.DiskMB, h.Capacity.DiskMB},
	} {
		if d[1] > 0 {
			l = max(l, d[0]/d[1])
		}
	}
	return l
}

// Pick returns the least-loaded host where req fits: lowest fullest
// dimension after placement, then fewest sandboxes, then lowest id, so
// placement is deterministic. It returns ErrNoCapacity when none fits.
func (p Policy) Pick(hosts []Host, req Resources) (Host, error) {
	var fit []Host
	for _, h := range hosts {
		if p.Fits(h, req) {
			fit = append(fit, h)
		}
	}
	if len(fit) == 0 {
		return Host{}, fmt.Errorf("%w (%d candidate hosts)", ErrNoCapacity, len(hosts))
	}
	sort.Slice(fit, func(i, j int) bool {
		li, lj := p.load(fit[i], req), p.load(fit[j], req)
		if li != lj {
			return li < lj
		}
		if fit[i].Sandboxes != fit[j].Sandboxes {
			return fit[i].Sandboxes < fit[j].Sandboxes
		}
		return fit[i].ID < fit[j].ID
	})
	return fit[0], nil
}

package agent

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	hostagentv1 "github.com/wrenn/wrenn/proto/hostagent/v1"
)

// Sample is one measurement of a sandbox's resource use.
type Sample struct {
	Time time.Time
	// CPUPercent is the share of one core used since the previous sample.
	CPUPercent  float64
	MemoryBytes uint64
	// DiskBytes is what the sandbox's writable disk holds.
	DiskBytes uint64
}

// Default sampling: one sample every 5 s, a day of them per sandbox.
const (
	DefaultMetricsInterval = 5 * time.Second
	DefaultMetricsCapacity = 24 * 60 * 60 / 5
)

// MetricsSampler samples every running sandbox's cpu, memory and disk at a
// fixed interval into a ring per sandbox. A ring grows as samples arrive and
// never beyond its capacity (32 bytes a sample: about 540 KiB for a day at
// 5 s), so memory stays bounded however long sandboxes live; rings of
// sandboxes that left the table are dropped at the next tick. Paused
// sandboxes are not sampled: their ring keeps what it had.
type MetricsSampler struct {
	m        *Manager
	interval time.Duration
	capacity int
	// diskUsage measures the bytes used on the filesystem holding path.
	diskUsage func(path string) (uint64, error)
	log       *slog.Logger

	mu    sync.Mutex
	rings map[string]*sampleRing
}

// NewMetricsSampler returns a sampler over m; interval and capacity of 0
// take the defaults.
func NewMetricsSampler(m *Manager, interval time.Duration, capacity int) *MetricsSampler {
	if interval <= 0 {
		interval = DefaultMetricsInterval
	}
	if capacity <= 0 {
		capacity = DefaultMetricsCapacity
	}
	return &MetricsSampler{m: m, interval: interval, capacity: capacity, diskUsage: statfsUsed, log: m.log, rings: map[string]*sampleRing{}}
}

// packedSample is how a ring stores a Sample, at 32 bytes instead of 48.
type packedSample struct {
	at   int64 // Unix nanoseconds
	cpu  float32
	mem  uint64
	disk uint64
}

func pack(s Sample) packedSample {
	return packedSample{at: s.Time.UnixNano(), cpu: float32(s.CPUPercent), mem: s.MemoryBytes, disk: s.DiskBytes}
}

func (p packedSample) unpack() Sample {
	return Sample{Time: time.Unix(0, p.at).UTC(), CPUPercent: float64(p.cpu), MemoryBytes: p.mem, DiskBytes: p.disk}
}

type sampleRing struct {
	buf  []packedSample
	next int // where the next sample goes once buf is at capacity
	// lastCPU and lastAt are the previous reading, for the cpu rate.
	lastCPU time.Duration
	lastAt  time.Time
}

func (r *sampleRing) add(s Sample, capacity int) {
	if len(r.buf) < capacity {
		r.buf = append(r.buf, pack(s))
		return
	}
	r.buf[r.next] = pack(s)
	r.next = (r.next + 1) % capacity
}

// since returns the samples after t, oldest first.
func (r *sampleRing) since(t time.Time) []Sample {
	out := make([]Sample, 0, len(r.buf))
	after := t.UnixNano()
	if t.IsZero() {
		after = math.MinInt64
	}
	for i := range r.buf {
		s := r.buf[(r.next+i)%len(r.buf)]
		if s.at > after {
			out = append(out, s.unpack())
		}
	}
	return out
}

// Run samples every interval until ctx ends.
func (ms *MetricsSampler) Run(ctx context.Context) {
	t := time.NewTicker(ms.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			ms.SampleAll(ctx)
		}
	}
}

// SampleAll takes one sample of every running sandbox and forgets the
// rings of sandboxes no longer in the table.
func (ms *MetricsSampler) SampleAll(ctx context.Context) {
	live := map[string]bool{}
	for _, snap := range ms.m.List() {
		live[snap.ID] = true
		if snap.State == StateRunning {
			ms.sample(ctx, snap.ID)
		}
	}
	ms.mu.Lock()
	for id := range ms.rings {
		if !live[id] {
			delete(ms.rings, id)
		}
	}
	ms.mu.Unlock()
}

// sample measures one sandbox; failures (it went away meanwhile) are
// logged at debug and leave no sample.
func (ms *MetricsSampler) sample(ctx context.Context, sandboxID string) {
	sb, err := ms.m.get(sandboxID)
	if err != nil {
		return
	}
	st, err := ms.m.o.Runtime.Stats(ctx, sandboxID)
	if err != nil {
		ms.log.Debug("sample sandbox stats", "sandbox_id", sandboxID, "err", err)
		return
	}
	var disk uint64
	sb.op.Lock()
	rootfs, started := sb.rootfs, sb.StartedAt
	sb.op.Unlock()
	if rootfs != nil {
		// The overlay reports the filesystem of its upper layer: the
		// sandbox's own disk.
		if disk, err = ms.diskUsage(rootfs.Path()); err != nil {
			ms.log.Debug("measure sandbox disk", "sandbox_id", sandboxID, "err", err)
		}
	}
	now := ms.m.o.Clock.Now().UTC()
	ms.mu.Lock()
	defer ms.mu.Unlock()
	r := ms.rings[sandboxID]
	if r == nil {
		// The first rate is over the sandbox's life so far.
		r = &sampleRing{lastAt: started}
		ms.rings[sandboxID] = r
	}
	var cpu float64
	if wall := now.Sub(r.lastAt); wall > 0 && st.CPUUsage >= r.lastCPU {
		cpu = float64(st.CPUUsage-r.lastCPU) / float64(wall) * 100
	}
	r.lastCPU, r.lastAt = st.CPUUsage, now
	r.add(Sample{Time: now, CPUPercent: cpu, MemoryBytes: st.MemoryBytes, DiskBytes: disk}, ms.capacity)
}

// Samples returns a sandbox's samples after since, oldest first. A running
// sandbox with none yet is sampled at once, so a caller right after create
// sees something.
func (ms *MetricsSampler) Samples(ctx context.Context, sandboxID string, since time.Time) ([]Sample, error) {
	sb, err := ms.m.get(sandboxID)
	if err != nil {
		return nil, err
	}
	ms.mu.Lock()
	_, ok := ms.rings[sandboxID]
	ms.mu.Unlock()
	if !ok {
		sb.op.Lock()
		running := sb.State == StateRunning
		sb.op.Unlock()
		if running {
			ms.sample(ctx, sandboxID)
		}
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	r := ms.rings[sandboxID]
	if r == nil {
		return nil, nil
	}
	return r.since(since), nil
}

func statfsUsed(path string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return (st.Blocks - st.Bfree) * uint64(st.Bsize), nil
}

// GetSandboxMetrics implements the RPC. Metrics are read, not an action on
// the sandbox, so they do not count as activity and paused sandboxes
// answer with what was sampled before the pause.
func (s *Service) GetSandboxMetrics(ctx context.Context, req *connect.Request[hostagentv1.GetSandboxMetricsRequest]) (*connect.Response[hostagentv1.GetSandboxMetricsResponse], error) {
	if s.metrics == nil {
		return nil, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("this agent does not sample metrics"))
	}
	var since time.Time
	if req.Msg.GetSince() != nil {
		since = req.Msg.GetSince().AsTime()
	}
	samples, err := s.metrics.Samples(ctx, req.Msg.GetSandboxId(), since)
	if err != nil {
		return nil, connectError(err)
	}
	out := make([]*hostagentv1.MetricSample, 0, len(samples))
	for _, x := range samples {
		out = append(out, &hostagentv1.MetricSample{
			Time: timestamppb.New(x.Time), CpuPercent: x.CPUPercent, MemoryBytes: x.MemoryBytes, DiskBytes: x.DiskBytes,
		})
	}
	return connect.NewResponse(&hostagentv1.GetSandboxMetricsResponse{Samples: out, IntervalSec: uint32(s.metrics.interval / time.Second)}), nil
}

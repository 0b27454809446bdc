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
// fixed interval into a ring per sandbox, all sandboxes in one sweep (a few
// cgroup files and a statfs each, no process and no timer per sandbox). A
// ring grows as samples arrive and never beyond its capacity (32 bytes a
// sample: about 540 KiB for a day at 5 s), so memory stays bounded however
// long sandboxes live. Paused sandboxes are not sampled: their ring keeps
// what it had.
//
// Just before a sandbox is paused or destroyed the sampler takes a last
// sample and flushes what the control plane has not got yet through its
// MetricsReporter, in the background; a destroyed sandbox's ring goes with
// it.
type MetricsSampler struct {
	m        *Manager
	interval time.Duration
	capacity int
	// diskUsage measures the bytes used on the filesystem holding path.
	diskUsage func(path string) (uint64, error)
	log       *slog.Logger
	reporter  MetricsReporter

	// flushes tracks deliveries in flight; flushCtx ends them at Close.
	flushes     sync.WaitGroup
	flushCtx    context.Context
	cancelFlush context.CancelFunc

	mu    sync.Mutex
	rings map[string]*sampleRing
}

// MetricsReporter delivers a sandbox's samples to the control plane,
// retrying as it sees fit, and returns when they were accepted, refused for
// good, or ctx ended. Delivering the same samples twice must be harmless.
type MetricsReporter interface {
	ReportMetrics(ctx context.Context, sandboxID string, samples []Sample) error
}

// maxFlushSamples is how many samples one delivery carries at most (about
// 100 KB of JSON); a day's ring goes in several.
const maxFlushSamples = 1000

// NewMetricsSampler returns a sampler over m that flushes through reporter
// (nil: nothing is flushed) and hooks itself into m's pauses and destroys;
// interval and capacity of 0 take the defaults.
func NewMetricsSampler(m *Manager, reporter MetricsReporter, interval time.Duration, capacity int) *MetricsSampler {
	if interval <= 0 {
		interval = DefaultMetricsInterval
	}
	if capacity <= 0 {
		capacity = DefaultMetricsCapacity
	}
	ms := &MetricsSampler{
		m: m, interval: interval, capacity: capacity, diskUsage: statfsUsed, log: m.log,
		reporter: reporter, rings: map[string]*sampleRing{},
	}
	ms.flushCtx, ms.cancelFlush = context.WithCancel(context.Background())
	m.onBeforeStop(ms.beforeStop)
	m.OnRemove(ms.forget)
	return ms
}

// Close waits up to grace for flushes in flight, then abandons them.
func (ms *MetricsSampler) Close(grace time.Duration) {
	done := make(chan struct{})
	go func() {
		ms.flushes.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
		ms.cancelFlush()
		<-done
	}
	ms.cancelFlush()
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
	// flushed is the time (Unix nanoseconds) of the newest sample the
	// control plane accepted; later ones go in the next flush.
	flushed int64
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
	sb.op.Lock()
	rootfs, started := sb.rootfs, sb.StartedAt
	sb.op.Unlock()
	ms.measure(ctx, sandboxID, rootfs, started)
}

// measure adds one sample of a sandbox whose root filesystem and start
// time the caller read.
func (ms *MetricsSampler) measure(ctx context.Context, sandboxID string, rootfs RootFS, started time.Time) {
	st, err := ms.m.o.Runtime.Stats(ctx, sandboxID)
	if err != nil {
		ms.log.Debug("sample sandbox stats", "sandbox_id", sandboxID, "err", err)
		return
	}
	var disk uint64
	if rootfs != nil {
		// The overlay reports the filesystem of its upper layer: the
		// sandbox's own disk.
		if disk, err = ms.diskUsage(rootfs.Path()); err != nil {
			ms.log.Debug("measure sandbox disk", "sandbox_id", sandboxID, "err", err)
		}
	}
	// Microseconds: what the control plane's timestamps hold, so a sample
	// it stored and the same sample in the ring compare equal.
	now := ms.m.o.Clock.Now().UTC().Truncate(time.Microsecond)
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

// beforeStop takes a last sample of a running sandbox and flushes what the
// control plane has not got yet. It runs under sb's lifecycle lock
// (Manager.onBeforeStop), so it reads sb directly.
func (ms *MetricsSampler) beforeStop(ctx context.Context, sb *Sandbox) {
	if sb.State == StateRunning {
		ms.measure(ctx, sb.ID, sb.rootfs, sb.StartedAt)
	}
	ms.flush(sb.ID)
}

// forget drops the ring of a sandbox that left the table.
func (ms *MetricsSampler) forget(sandboxID string) {
	ms.mu.Lock()
	delete(ms.rings, sandboxID)
	ms.mu.Unlock()
}

// flush delivers, in the background, the samples of sandboxID taken after
// the last accepted flush. They are copied now, so a ring dropped meanwhile
// loses nothing. The mark advances only when the control plane accepted
// them; an overlapping flush resends a few, which it stores once.
func (ms *MetricsSampler) flush(sandboxID string) {
	if ms.reporter == nil {
		return
	}
	ms.mu.Lock()
	r := ms.rings[sandboxID]
	var samples []Sample
	if r != nil {
		samples = r.since(time.Unix(0, r.flushed))
	}
	ms.mu.Unlock()
	if len(samples) == 0 {
		return
	}
	ms.flushes.Go(func() {
		for len(samples) > 0 {
			n := min(len(samples), maxFlushSamples)
			if err := ms.reporter.ReportMetrics(ms.flushCtx, sandboxID, samples[:n]); err != nil {
				ms.log.Error("sandbox metrics not flushed", "sandbox_id", sandboxID, "samples", len(samples), "err", err)
				return
			}
			last := samples[n-1].Time.UnixNano()
			samples = samples[n:]
			ms.mu.Lock()
			if r := ms.rings[sandboxID]; r != nil && last > r.flushed {
				r.flushed = last
			}
			ms.mu.Unlock()
		}
	})
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

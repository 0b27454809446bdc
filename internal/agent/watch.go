package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/wrenn/wrenn/internal/runtime"
	"github.com/wrenn/wrenn/internal/runtime/oci"
)

const (
	// autoPauseTimeout bounds one pause made by the sweep; a runtime that
	// cannot freeze a sandbox in that time gets it destroyed instead.
	autoPauseTimeout = 30 * time.Second
	// reportGrace is how long Run waits, once told to stop, for event
	// deliveries still in flight.
	reportGrace = 5 * time.Second
)

// Run watches the table until ctx ends: a running sandbox idle for longer
// than its timeout is paused and reported (destroyed and reported if the
// pause fails), and a sandbox whose init died on its own is released and
// reported. On return no sweep is in progress and event deliveries in flight
// have finished or been abandoned.
func (m *Manager) Run(ctx context.Context) {
	defer m.stopReports()
	lastHealth := m.o.Clock.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.o.Clock.After(m.o.SweepInterval):
		}
		now := m.o.Clock.Now()
		m.sweepIdle(ctx, now)
		if now.Sub(lastHealth) >= m.o.HealthInterval {
			m.checkHealth(ctx)
			lastHealth = now
		}
	}
}

func (m *Manager) stopReports() {
	done := make(chan struct{})
	go func() {
		m.reports.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(reportGrace):
		m.cancelReports()
		<-done
	}
	m.cancelReports()
}

func (m *Manager) all() []*Sandbox {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Sandbox, 0, len(m.sandboxes))
	for _, sb := range m.sandboxes {
		out = append(out, sb)
	}
	return out
}

// sweepIdle pauses every running sandbox idle past its timeout at now.
func (m *Manager) sweepIdle(ctx context.Context, now time.Time) {
	for _, sb := range m.all() {
		if ctx.Err() != nil {
			return
		}
		// A sandbox busy with a lifecycle operation is not idle.
		if !sb.op.TryLock() {
			continue
		}
		if m.idle(sb, now) {
			m.autoPause(ctx, sb)
		}
		sb.op.Unlock()
	}
}

// idle reports whether sb (whose op the caller holds) should be paused.
func (m *Manager) idle(sb *Sandbox, now time.Time) bool {
	if sb.State != StateRunning || sb.Timeout <= 0 || sb.busy.Load() > 0 {
		return false
	}
	return now.Sub(time.Unix(0, sb.lastActive.Load())) >= sb.Timeout
}

// autoPause pauses an idle sandbox, or destroys it when it cannot be paused,
// and reports either; the caller holds sb.op.
func (m *Manager) autoPause(ctx context.Context, sb *Sandbox) {
	// A pause the agent started finishes even if the agent is stopping.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), autoPauseTimeout)
	defer cancel()
	perr := m.pauseLocked(pctx, sb)
	if perr == nil {
		m.log.Info("sandbox paused for inactivity", "sandbox_id", sb.ID, "timeout", sb.Timeout)
		m.mu.Lock()
		m.autoPaused = append(m.autoPaused, sb.ID)
		m.mu.Unlock()
		m.report(newEvent(sb.ID, EventAutoPaused, m.o.Clock.Now(), nil))
		return
	}
	m.log.Error("auto-pause failed, destroying sandbox", "sandbox_id", sb.ID, "err", perr)
	cause := perr
	if derr := m.destroyLocked(pctx, sb); derr != nil {
		m.log.Error("destroy after failed auto-pause", "sandbox_id", sb.ID, "err", derr)
		cause = errors.Join(perr, derr)
	}
	m.report(newEvent(sb.ID, EventDestroyed, m.o.Clock.Now(), fmt.Errorf("auto-pause after inactivity failed: %w", cause)))
}

// StateLister is a runtime that reports the state of all its sandboxes in
// one call. With it a health check costs one runtime command per interval
// instead of one per sandbox (with runc a process each: 100 a second for
// 500 sandboxes at the default interval).
type StateLister interface {
	// States maps every sandbox id the runtime has to its state.
	States(ctx context.Context) (map[string]runtime.State, error)
}

var _ StateLister = (*oci.Driver)(nil)

// checkHealth asks the runtime about every running or paused sandbox and
// releases the ones whose init is gone. The runtime is asked without holding
// the sandbox's lock, so RPCs are not held up by the check. Sandboxes are
// chosen before the runtime is asked, so one created meanwhile is never
// missing from an answer that predates it; died re-checks under the lock.
func (m *Manager) checkHealth(ctx context.Context) {
	var live []*Sandbox
	for _, sb := range m.all() {
		if !sb.op.TryLock() {
			continue
		}
		if sb.State == StateRunning || sb.State == StatePaused {
			live = append(live, sb)
		}
		sb.op.Unlock()
	}
	if len(live) == 0 {
		return
	}
	lister, batched := m.o.Runtime.(StateLister)
	var states map[string]runtime.State
	if batched {
		var err error
		if states, err = lister.States(ctx); err != nil {
			m.log.Warn("runtime states", "err", err)
			return
		}
	}
	for _, sb := range live {
		if ctx.Err() != nil {
			return
		}
		var st runtime.State
		var err error
		if batched {
			var ok bool
			if st, ok = states[sb.ID]; !ok {
				err = runtime.ErrNotFound
			}
		} else {
			st, err = m.o.Runtime.State(ctx, sb.ID)
		}
		switch {
		case errors.Is(err, runtime.ErrNotFound):
		case err != nil:
			m.log.Warn("runtime state", "sandbox_id", sb.ID, "err", err)
			continue
		case st == runtime.StateStopped:
		default:
			continue
		}
		m.died(ctx, sb, st)
	}
}

// died releases a sandbox whose runtime no longer runs it, unless a
// lifecycle operation already took it away in the meantime.
func (m *Manager) died(ctx context.Context, sb *Sandbox, st runtime.State) {
	sb.op.Lock()
	defer sb.op.Unlock()
	if sb.State != StateRunning && sb.State != StatePaused {
		return
	}
	m.log.Warn("sandbox died on its own", "sandbox_id", sb.ID, "runtime_state", st)
	cause := fmt.Errorf("the sandbox's init is no longer running (runtime state %q)", st)
	if st == "" {
		cause = errors.New("the runtime no longer knows the sandbox")
	}
	if err := m.destroyLocked(context.WithoutCancel(ctx), sb); err != nil {
		m.log.Error("release dead sandbox", "sandbox_id", sb.ID, "err", err)
	}
	m.report(newEvent(sb.ID, EventDied, m.o.Clock.Now(), cause))
}

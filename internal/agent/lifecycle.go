package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/wrenn/wrenn/internal/envdclient"
)

// resumeInitTimeout bounds the /init round trip after a thaw; envd was
// frozen mid-flight, not restarted, so it answers at once or not at all.
const resumeInitTimeout = 10 * time.Second

// Pause freezes a running sandbox; memory and disk are kept. A sandbox that
// is not running (paused, being created or destroyed) is ErrConflict.
func (m *Manager) Pause(ctx context.Context, sandboxID string) (Snapshot, error) {
	sb, err := m.get(sandboxID)
	if err != nil {
		return Snapshot{}, err
	}
	if sb.creating.Load() {
		return Snapshot{}, fmt.Errorf("%w: sandbox %s is %s, only a running sandbox can be paused", ErrConflict, sb.ID, StateCreating)
	}
	sb.op.Lock()
	defer sb.op.Unlock()
	if err := m.pauseLocked(ctx, sb); err != nil {
		return Snapshot{}, err
	}
	return sb.snapshot(), nil
}

// pauseLocked pauses sb; the caller holds sb.op.
func (m *Manager) pauseLocked(ctx context.Context, sb *Sandbox) error {
	if sb.State == StateDestroying {
		return goneError(sb.ID)
	}
	if sb.State != StateRunning {
		return fmt.Errorf("%w: sandbox %s is %s, only a running sandbox can be paused", ErrConflict, sb.ID, sb.State)
	}
	m.stopping(ctx, sb)
	start := time.Now()
	if err := m.o.Runtime.Pause(ctx, sb.ID); err != nil {
		return fmt.Errorf("pause sandbox %s: %w", sb.ID, err)
	}
	sb.State = StatePaused
	if err := m.persist(sb); err != nil {
		// The record's state is advisory (Recover asks the runtime), so a
		// failed write does not undo a pause that happened.
		m.log.Warn("persist paused state", "sandbox_id", sb.ID, "err", err)
	}
	m.log.Info("sandbox paused", "sandbox_id", sb.ID, "duration_ms", time.Since(start).Milliseconds())
	return nil
}

// Resume thaws a paused sandbox and sends envd its /init again (token, env
// and the host's clock, which stood still inside while frozen). A sandbox
// that is not paused is ErrConflict. Resume counts as activity.
func (m *Manager) Resume(ctx context.Context, sandboxID string) (Snapshot, error) {
	sb, err := m.get(sandboxID)
	if err != nil {
		return Snapshot{}, err
	}
	if sb.creating.Load() {
		return Snapshot{}, fmt.Errorf("%w: sandbox %s is %s, only a paused sandbox can be resumed", ErrConflict, sb.ID, StateCreating)
	}
	sb.op.Lock()
	defer sb.op.Unlock()
	if sb.State == StateDestroying {
		return Snapshot{}, goneError(sb.ID)
	}
	if sb.State != StatePaused {
		return Snapshot{}, fmt.Errorf("%w: sandbox %s is %s, only a paused sandbox can be resumed", ErrConflict, sb.ID, sb.State)
	}
	start := time.Now()
	if err := m.o.Runtime.Resume(ctx, sb.ID); err != nil {
		return Snapshot{}, fmt.Errorf("resume sandbox %s: %w", sb.ID, err)
	}
	// The processes run again from here on, whatever /init says: the table
	// follows the runtime.
	sb.State = StateRunning
	m.touch(sb)
	if err := m.persist(sb); err != nil {
		m.log.Warn("persist running state", "sandbox_id", sb.ID, "err", err)
	}
	initCtx, cancel := context.WithTimeout(ctx, resumeInitTimeout)
	defer cancel()
	err = sb.envd.Init(initCtx, envdclient.InitRequest{
		AccessToken: sb.Token,
		EnvVars:     sb.Env,
		Timestamp:   m.o.Clock.Now().UTC(),
	})
	if err != nil {
		return sb.snapshot(), fmt.Errorf("re-initialise envd after resume of %s: %w", sb.ID, err)
	}
	m.log.Info("sandbox resumed", "sandbox_id", sb.ID, "duration_ms", time.Since(start).Milliseconds())
	return sb.snapshot(), nil
}

// Ping records activity on a sandbox, restarting its inactivity timer. It
// does not resume a paused sandbox.
func (m *Manager) Ping(sandboxID string) error {
	sb, err := m.get(sandboxID)
	if err != nil {
		return err
	}
	m.touch(sb)
	return nil
}

// SetTimeout replaces a sandbox's inactivity timeout (0: never auto-pause)
// and restarts its timer.
func (m *Manager) SetTimeout(sandboxID string, timeout time.Duration) error {
	if timeout < 0 {
		return fmt.Errorf("%w: timeout %s is negative", ErrInvalid, timeout)
	}
	sb, err := m.get(sandboxID)
	if err != nil {
		return err
	}
	sb.op.Lock()
	defer sb.op.Unlock()
	if sb.State == StateDestroying {
		return goneError(sandboxID)
	}
	sb.Timeout = timeout
	m.touch(sb)
	if sb.State != StateCreating {
		if err := m.persist(sb); err != nil {
			return fmt.Errorf("set timeout of %s: %w", sandboxID, err)
		}
	}
	return nil
}

// Touch records activity on a sandbox for callers outside the manager's own
// RPCs (streams, proxied traffic). Unknown ids are ignored.
func (m *Manager) Touch(sandboxID string) {
	if sb, err := m.get(sandboxID); err == nil {
		m.touch(sb)
	}
}

func (m *Manager) touch(sb *Sandbox) {
	sb.lastActive.Store(m.o.Clock.Now().UnixNano())
}

// begin marks an RPC in flight on a running sandbox and returns its envd
// client; done ends it and records activity. While any RPC is in flight the
// sandbox is not idle, however long the RPC takes.
func (m *Manager) begin(sb *Sandbox) (envd *envdclient.Client, done func(), err error) {
	sb.op.Lock()
	defer sb.op.Unlock()
	if sb.State == StateDestroying {
		return nil, nil, goneError(sb.ID)
	}
	if sb.State != StateRunning {
		return nil, nil, fmt.Errorf("%w: sandbox %s is %s, not running", ErrConflict, sb.ID, sb.State)
	}
	sb.busy.Add(1)
	m.touch(sb)
	return sb.envd, func() {
		m.touch(sb)
		sb.busy.Add(-1)
	}, nil
}

// TakeAutoPaused returns the ids paused for inactivity since the previous
// call, oldest first, and forgets them.
func (m *Manager) TakeAutoPaused() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := m.autoPaused
	m.autoPaused = nil
	return out
}

// goneError is what an operation gets that waited for a sandbox which was
// destroyed (or whose create failed) meanwhile.
func goneError(sandboxID string) error {
	return fmt.Errorf("%w: no sandbox %s on this host", ErrNotFound, sandboxID)
}

// Package monitor is the control plane's safety net (DESIGN.md §2): every
// minute it compares each host's live sandbox list with the database and
// settles what background work and agent callbacks left wrong. Hosts that
// stopped sending heartbeats become unreachable and their sandboxes
// missing; they are restored from the host's list when it returns. Every
// change is a compare-and-set published to wrenn:events, like any other
// writer's, and one replica at a time runs a pass (a Postgres advisory
// lock).
package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/wrenn/wrenn/internal/api"
	"github.com/wrenn/wrenn/internal/hostclient"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// lockKey is the advisory lock a pass holds ("wrenn" + 1), so replicas do
// not reconcile the same hosts at the same time.
const lockKey int64 = 0x7772656e6e01

// Options configures a Monitor. Zero durations take the defaults.
type Options struct {
	DB     *pgxpool.Pool
	Agents hostclient.Dialer
	Events events.Publisher
	Logger *slog.Logger
	// Now is the clock heartbeats and grace periods are measured on; nil
	// means time.Now.
	Now func() time.Time
	// Interval between passes; default 60 s.
	Interval time.Duration
	// HeartbeatTimeout: a host silent this long is unreachable; default 90 s.
	HeartbeatTimeout time.Duration
	// Grace is how long a transient status may last before the monitor
	// settles it; default 3 min, longer than the API's 2-minute agent
	// deadline plus its write, so the monitor does not race live work.
	Grace time.Duration
	// RPCTimeout bounds one agent call; default 15 s.
	RPCTimeout time.Duration
}

// Monitor reconciles the database with the hosts.
type Monitor struct {
	o   Options
	q   *db.Queries
	log *slog.Logger
}

// New returns a monitor; Run starts it, RunOnce runs one pass.
func New(o Options) *Monitor {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Interval == 0 {
		o.Interval = time.Minute
	}
	if o.HeartbeatTimeout == 0 {
		o.HeartbeatTimeout = 90 * time.Second
	}
	if o.Grace == 0 {
		o.Grace = 3 * time.Minute
	}
	if o.RPCTimeout == 0 {
		o.RPCTimeout = 15 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Monitor{o: o, q: db.New(o.DB), log: o.Logger}
}

// Run runs a pass every Interval until ctx ends, then returns nil. A failed
// pass is logged; the next one tries again.
func (m *Monitor) Run(ctx context.Context) error {
	t := time.NewTicker(m.o.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := m.RunOnce(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("host monitor pass failed", "err", err)
		}
	}
}

// RunOnce runs one pass unless another replica is running one; ran says
// whether it did.
func (m *Monitor) RunOnce(ctx context.Context) (ran bool, err error) {
	conn, err := m.o.DB.Acquire(ctx)
	if err != nil {
		return false, fmt.Errorf("acquire connection for the monitor lock: %w", err)
	}
	defer conn.Release()
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", lockKey).Scan(&ran); err != nil {
		return false, fmt.Errorf("take the monitor lock: %w", err)
	}
	if !ran {
		return false, nil
	}
	defer func() {
		// A session lock outlives a failed unlock only as long as the
		// connection, so a failure here closes it.
		if _, uerr := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lockKey); uerr != nil {
			m.log.Warn("release the monitor lock", "err", uerr)
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
		}
	}()
	return true, m.pass(ctx)
}

func (m *Monitor) pass(ctx context.Context) error {
	now := m.o.Now()
	lost, err := m.q.MarkHostsUnreachable(ctx, now.Add(-m.o.HeartbeatTimeout))
	if err != nil {
		return fmt.Errorf("mark silent hosts unreachable: %w", err)
	}
	for _, h := range lost {
		m.log.Warn("host stopped sending heartbeats", "host_id", h)
	}
	// Every unreachable host, not just the newly lost: a pass that died
	// halfway left some sandboxes unmarked.
	unreachable, err := m.q.ListHostsByStatus(ctx, "unreachable")
	if err != nil {
		return fmt.Errorf("list unreachable hosts: %w", err)
	}
	var errs []error
	for _, h := range unreachable {
		errs = append(errs, m.markMissing(ctx, h))
	}
	online, err := m.q.ListHostsByStatus(ctx, "online")
	if err != nil {
		return fmt.Errorf("list online hosts: %w", err)
	}
	for _, h := range online {
		errs = append(errs, m.reconcile(ctx, h, now))
	}
	return errors.Join(errs...)
}

func (m *Monitor) markMissing(ctx context.Context, h db.Host) error {
	rows, err := m.q.ListLiveSandboxesOnHost(ctx, h.ID)
	if err != nil {
		return fmt.Errorf("list sandboxes of host %s: %w", h.ID, err)
	}
	for _, sb := range rows {
		cur := lifecycle.Status(sb.Status)
		if cur == lifecycle.Missing || !lifecycle.Allowed(cur, lifecycle.Missing) {
			continue
		}
		if err := m.move(ctx, sb, lifecycle.Missing, "", nil); err != nil {
			return err
		}
	}
	return nil
}

// reconcile compares one reachable host's live list with its rows.
func (m *Monitor) reconcile(ctx context.Context, h db.Host, now time.Time) error {
	log := m.log.With("host_id", h.ID)
	// Rows first, then the host: a row that changes after it was read fails
	// its compare-and-set (on status and generation, so even a round trip
	// back to the same status counts), whereas a host list older than the
	// rows could undo a transition that finished in between.
	rows, err := m.q.ListLiveSandboxesOnHost(ctx, h.ID)
	if err != nil {
		return fmt.Errorf("list sandboxes of host %s: %w", h.ID, err)
	}
	if len(rows) == 0 {
		return nil
	}
	agent, err := m.o.Agents.Agent(h.ID, h.Address)
	if err != nil {
		log.Warn("monitor cannot reach host", "err", err)
		return nil
	}
	lctx, cancel := context.WithTimeout(ctx, m.o.RPCTimeout)
	listing, err := agent.ListSandboxes(lctx)
	cancel()
	if err != nil {
		// The heartbeat decides reachability; one failed list does not.
		log.Warn("monitor could not list the host's sandboxes", "err", err)
		return nil
	}
	live := make(map[string]hostclient.Sandbox, len(listing.Sandboxes))
	for _, s := range listing.Sandboxes {
		if s.State != hostclient.StateStopped {
			live[s.ID] = s
		}
	}
	autoPaused := make(map[string]bool, len(listing.AutoPausedIDs))
	for _, id := range listing.AutoPausedIDs {
		autoPaused[id] = true
	}
	var errs []error
	for _, sb := range rows {
		hs, onHost := live[sb.ID]
		cur := lifecycle.Status(sb.Status)
		switch {
		case cur == lifecycle.Missing:
			errs = append(errs, m.restore(ctx, sb, hs, onHost))
		case cur == lifecycle.Running:
			switch {
			case onHost && hs.State == hostclient.StatePaused:
				errs = append(errs, m.move(ctx, sb, lifecycle.Paused, "", nil))
			case !onHost && autoPaused[sb.ID]:
				errs = append(errs, m.move(ctx, sb, lifecycle.Paused, "", nil))
			case !onHost:
				errs = append(errs, m.move(ctx, sb, lifecycle.Stopped, "", nil))
			}
		case cur == lifecycle.Paused:
			if !onHost {
				errs = append(errs, m.move(ctx, sb, lifecycle.Stopped, "", nil))
			}
		case cur.Transient() && sb.UpdatedAt.Before(now.Add(-m.o.Grace)):
			errs = append(errs, m.settle(ctx, agent, sb, hs, onHost))
		}
	}
	return errors.Join(errs...)
}

// restore brings a missing sandbox back to what its returned host reports.
func (m *Monitor) restore(ctx context.Context, sb db.Sandbox, hs hostclient.Sandbox, onHost bool) error {
	if !onHost {
		return m.move(ctx, sb, lifecycle.Stopped, "", nil)
	}
	switch hs.State {
	case hostclient.StateRunning:
		return m.move(ctx, sb, lifecycle.Running, "", nil)
	case hostclient.StatePaused:
		return m.move(ctx, sb, lifecycle.Paused, "", nil)
	}
	// The host has it but cannot say how it is: trust what it was.
	if sb.MissingFrom != nil {
		if was := lifecycle.Status(*sb.MissingFrom); was == lifecycle.Running || was == lifecycle.Paused {
			return m.move(ctx, sb, was, "", nil)
		}
	}
	return nil
}

// settle ends a transient status that outlived its grace period with what
// the host reports.
func (m *Monitor) settle(ctx context.Context, agent hostclient.Agent, sb db.Sandbox, hs hostclient.Sandbox, onHost bool) error {
	cur := lifecycle.Status(sb.Status)
	if !onHost {
		if cur == lifecycle.Starting {
			return m.move(ctx, sb, lifecycle.Error, "the sandbox did not start; create it again", nil)
		}
		return m.move(ctx, sb, lifecycle.Stopped, "", nil)
	}
	if cur == lifecycle.Stopping {
		// The destroy was lost: finish it.
		dctx, cancel := context.WithTimeout(ctx, m.o.RPCTimeout)
		err := agent.DestroySandbox(dctx, sb.ID)
		cancel()
		if err != nil && !errors.Is(err, hostclient.ErrNotFound) {
			m.log.Warn("monitor could not finish destroying a sandbox", "sandbox_id", sb.ID, "host_id", sb.HostID, "err", err)
			return nil
		}
		return m.move(ctx, sb, lifecycle.Stopped, "", nil)
	}
	switch hs.State {
	case hostclient.StateRunning:
		var info *events.RunningInfo
		if cur == lifecycle.Starting {
			started := hs.StartedAt
			if started.IsZero() {
				started = m.o.Now()
			}
			info = &events.RunningInfo{HostIP: hs.HostIP, GuestIP: hs.GuestIP, EnvdVersion: hs.EnvdVersion, DiskMB: int64(hs.DiskMB), StartedAt: started}
		}
		return m.move(ctx, sb, lifecycle.Running, "", info)
	case hostclient.StatePaused:
		if lifecycle.Allowed(cur, lifecycle.Paused) {
			return m.move(ctx, sb, lifecycle.Paused, "", nil)
		}
	}
	return m.move(ctx, sb, lifecycle.Error, "the sandbox's state could not be established; delete it", nil)
}

// move publishes and records sb's transition to `to` with a compare-and-set
// on the status and generation the monitor read: its decision rests on that
// read and on a host list taken after it, so any change since (a writer
// that finished after all, an agent callback) voids it. A move bumps the
// generation like any transition, so the outcome of an operation the
// monitor settled, should its writer still be alive, changes nothing.
func (m *Monitor) move(ctx context.Context, sb db.Sandbox, to lifecycle.Status, msg string, info *events.RunningInfo) error {
	from := lifecycle.Status(sb.Status)
	if err := lifecycle.Check(from, to); err != nil {
		return fmt.Errorf("monitor: sandbox %s: %w", sb.ID, err)
	}
	log := m.log.With("sandbox_id", sb.ID, "team_id", sb.TeamID, "host_id", sb.HostID)
	e := events.Event{SandboxID: sb.ID, TeamID: sb.TeamID, HostID: sb.HostID, From: from, To: to, Generation: sb.Generation, Actor: "monitor", Error: msg, Time: m.o.Now().UTC(), Running: info}
	if m.o.Events != nil {
		if err := m.o.Events.Publish(ctx, e); err != nil {
			log.Warn("publish lifecycle event", "err", err, "from", from, "to", to)
		}
	}
	moved, err := api.ApplyTransition(ctx, m.q, e)
	if err != nil {
		return err
	}
	if moved {
		log.Info("monitor settled sandbox", "from", from, "to", to)
	}
	return nil
}

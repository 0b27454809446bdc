package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/wrenn/wrenn/internal/envdclient"
	"github.com/wrenn/wrenn/internal/runtime"
)

// Recover rebuilds the table from the records under Dir after an agent
// restart: sandboxes the runtime still runs are re-adopted and keep working;
// everything else that belongs to no adopted sandbox (runtime containers,
// namespaces, veths, firewall rules, mounts, loop devices, directories) is
// released. It runs before the agent serves.
func (m *Manager) Recover(ctx context.Context) error {
	entries, err := os.ReadDir(m.o.Dir)
	if err != nil {
		return fmt.Errorf("read sandboxes directory: %w", err)
	}
	keep := map[string]bool{}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		sb, err := m.adopt(ctx, e.Name())
		if err != nil {
			m.log.Warn("not re-adopting sandbox", "sandbox_id", e.Name(), "reason", err)
			continue
		}
		keep[sb.ID] = true
		m.mu.Lock()
		m.sandboxes[sb.ID] = sb
		m.mu.Unlock()
		m.log.Info("re-adopted sandbox", "sandbox_id", sb.ID, "state", sb.State)
	}

	// Release leftovers outermost first: processes, then their network,
	// then their mounts, then their files.
	var errs []error
	ids, err := m.o.Runtime.List(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("list runtime sandboxes: %w", err))
	}
	for _, sid := range ids {
		if !keep[sid] {
			if err := m.o.Runtime.Destroy(ctx, sid); err != nil {
				errs = append(errs, fmt.Errorf("destroy orphan %s: %w", sid, err))
			}
		}
	}
	if err := m.o.Network.CleanupOrphans(ctx, keep); err != nil {
		errs = append(errs, fmt.Errorf("clean up orphan networks: %w", err))
	}
	if err := m.o.Images.CleanupOrphans(ctx, keep); err != nil {
		errs = append(errs, fmt.Errorf("clean up orphan mounts: %w", err))
	}
	for _, e := range entries {
		if e.IsDir() && !keep[e.Name()] {
			if err := os.RemoveAll(filepath.Join(m.o.Dir, e.Name())); err != nil {
				errs = append(errs, fmt.Errorf("remove orphan directory: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// adopt takes back one sandbox from its record if its runtime still has it.
func (m *Manager) adopt(ctx context.Context, name string) (*Sandbox, error) {
	b, err := os.ReadFile(filepath.Join(m.o.Dir, name, stateFile))
	if err != nil {
		return nil, fmt.Errorf("read record: %w", err)
	}
	sb := &Sandbox{}
	if err := json.Unmarshal(b, sb); err != nil {
		return nil, fmt.Errorf("decode record: %w", err)
	}
	if sb.ID != name || sb.Link == nil {
		return nil, errors.New("record does not match its directory")
	}
	st, err := m.o.Runtime.State(ctx, sb.ID)
	if err != nil {
		return nil, fmt.Errorf("runtime state: %w", err)
	}
	switch st {
	case runtime.StateRunning:
		sb.State = StateRunning
	case runtime.StatePaused:
		sb.State = StatePaused
	default:
		return nil, fmt.Errorf("runtime reports it %s", st)
	}
	if err := m.o.Network.Adopt(ctx, sb.Link); err != nil {
		return nil, fmt.Errorf("adopt network: %w", err)
	}
	dir := m.sandboxDir(sb.ID)
	rootfs, err := m.o.Images.Adopt(ctx, sb.ID, sb.Template, dir)
	if err != nil {
		return nil, fmt.Errorf("adopt root filesystem: %w", err)
	}
	sb.rootfs = rootfs
	link := sb.Link
	sb.release.add("remove sandbox directory", func(context.Context) error { return os.RemoveAll(dir) })
	sb.release.add("release root filesystem", rootfs.Release)
	sb.release.add("tear down network", func(ctx context.Context) error { return m.o.Network.Teardown(ctx, link) })
	sb.release.add("destroy in runtime", func(ctx context.Context) error { return m.o.Runtime.Destroy(ctx, sb.ID) })
	sb.envd = envdclient.New(m.o.EnvdTransport, link.GuestIP, sb.Token)
	sb.release.add("close envd connections", func(context.Context) error { sb.envd.Close(); return nil })
	// Idle time is counted from re-adoption: the agent cannot know how long
	// the sandbox was idle while it was down.
	m.touch(sb)
	return sb, nil
}

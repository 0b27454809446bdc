package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/jackc/pgx/v5"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/scheduler"
)

// errNoHost is the 503 of a create with no host online.
var errNoHost = &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "no host is online to run the sandbox; try again shortly or ask an administrator to add a host"}

// placeAndInsert picks a host with room for params and inserts the sandbox
// on it, in one transaction that holds the candidate hosts' rows locked: a
// concurrent create waits, then sees this sandbox's use, so admission
// limits hold under races.
func (a *API) placeAndInsert(ctx context.Context, params db.InsertSandboxParams) (db.Sandbox, db.Host, error) {
	var sb db.Sandbox
	var host db.Host
	err := pgx.BeginFunc(ctx, a.d.DB, func(tx pgx.Tx) error {
		q := a.q.WithTx(tx)
		hosts, err := q.LockPlaceableHosts(ctx, a.d.Now().Add(-heartbeatWindow))
		if err != nil {
			return fmt.Errorf("lock hosts: %w", err)
		}
		if len(hosts) == 0 {
			return errNoHost
		}
		ids := make([]string, len(hosts))
		byID := make(map[string]db.Host, len(hosts))
		for i, h := range hosts {
			ids[i] = h.ID
			byID[h.ID] = h
		}
		usage, err := q.HostUsage(ctx, ids)
		if err != nil {
			return fmt.Errorf("read host usage: %w", err)
		}
		cands := make(map[string]*scheduler.Host, len(hosts))
		for _, h := range hosts {
			cands[h.ID] = &scheduler.Host{ID: h.ID, Capacity: scheduler.Resources{VCPUs: float64(h.Vcpus), MemoryMB: float64(h.MemoryMb), DiskMB: float64(h.DiskMb)}}
		}
		for _, u := range usage {
			c := cands[u.HostID]
			use := a.policy.Use(scheduler.Resources{
				VCPUs: float64(u.Vcpus), MemoryMB: float64(u.MemoryMb), DiskMB: float64(u.DiskMb + u.DefaultDisks*a.d.DefaultDiskMB),
			}, u.Paused)
			c.Used = scheduler.Resources{VCPUs: c.Used.VCPUs + use.VCPUs, MemoryMB: c.Used.MemoryMB + use.MemoryMB, DiskMB: c.Used.DiskMB + use.DiskMB}
			c.Sandboxes += int(u.Sandboxes)
		}
		list := make([]scheduler.Host, 0, len(cands))
		for _, id := range ids {
			list = append(list, *cands[id])
		}
		disk := params.DiskMb
		if disk == 0 {
			disk = a.d.DefaultDiskMB
		}
		req := scheduler.Resources{VCPUs: float64(params.Vcpus), MemoryMB: float64(params.MemoryMb), DiskMB: float64(disk)}
		picked, err := a.policy.Pick(list, req)
		if errors.Is(err, scheduler.ErrNoCapacity) {
			return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Cause: err, Message: fmt.Sprintf(
				"no host has room for %d vCPUs, %d MiB of memory and %d MiB of disk; destroy or pause sandboxes, ask for less, or ask an administrator to add a host",
				params.Vcpus, params.MemoryMb, disk)}
		}
		if err != nil {
			return fmt.Errorf("place sandbox: %w", err)
		}
		host = byID[picked.ID]
		params.HostID = host.ID
		if sb, err = q.InsertSandbox(ctx, params); err != nil {
			return fmt.Errorf("insert sandbox: %w", err)
		}
		return nil
	})
	return sb, host, err
}

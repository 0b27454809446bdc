package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/events"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/lifecycle"
)

// HostCredentials is what registration and refresh answer: the host's
// tokens and, when the agent sent a CSR, its server certificate and the CA
// that signed it (PEM).
type HostCredentials struct {
	HostID        string `json:"host_id"`
	HostToken     string `json:"host_token"`
	RefreshToken  string `json:"refresh_token"`
	Certificate   string `json:"certificate,omitempty"`
	CACertificate string `json:"ca_certificate,omitempty"`
}

func newHostTokens() (host, refresh string) {
	return "wrh_" + id.Secret(32), "wrf_" + id.Secret(32)
}

// signHostCert signs csr (PEM, may be empty) for the agent at address.
func (a *API) signHostCert(csr, address string) (HostCredentials, error) {
	if csr == "" {
		return HostCredentials{}, nil
	}
	if a.d.CA == nil {
		return HostCredentials{}, invalid("csr", "this control plane has no certificate authority; register without a CSR")
	}
	cert, err := a.d.CA.SignServer([]byte(csr), address, a.d.Now())
	if err != nil {
		return HostCredentials{}, invalid("csr", "%v", err)
	}
	return HostCredentials{Certificate: string(cert), CACertificate: string(a.d.CA.CertPEM)}, nil
}

// refreshHost trades a refresh token for a new host token and refresh
// token (both old ones stop working) and, with a CSR, a new certificate.
func (a *API) refreshHost(w http.ResponseWriter, r *http.Request) {
	var req struct {
		RefreshToken string `json:"refresh_token"`
		CSR          string `json:"csr"`
	}
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if req.RefreshToken == "" {
		a.fail(w, r, invalid("refresh_token", "is required"))
		return
	}
	hostToken, refreshToken := newHostTokens()
	var creds HostCredentials
	err := pgx.BeginTxFunc(r.Context(), a.d.DB, pgx.TxOptions{}, func(tx pgx.Tx) error {
		q := db.New(tx)
		row, err := q.RefreshHostTokens(r.Context(), db.RefreshHostTokensParams{
			TokenHash:           ptr(hashSecret(hostToken)),
			NewRefreshTokenHash: ptr(hashSecret(refreshToken)),
			RefreshTokenHash:    ptr(hashSecret(req.RefreshToken)),
		})
		if err != nil {
			return err
		}
		// The certificate names the address the host last reported (at
		// registration or in a heartbeat), not one picked here.
		if creds, err = a.signHostCert(req.CSR, row.Address); err != nil {
			return err
		}
		creds.HostID = row.ID
		return nil
	})
	if isNoRows(err) {
		a.fail(w, r, unauthorized("refresh token is invalid or was already used; register the host again"))
		return
	}
	if err != nil {
		a.fail(w, r, fmt.Errorf("refresh host credentials: %w", err))
		return
	}
	creds.HostToken, creds.RefreshToken = hostToken, refreshToken
	a.reqLog(r).Info("host credentials refreshed", "host_id", creds.HostID, "certificate", creds.Certificate != "")
	writeJSON(w, http.StatusOK, creds)
}

// hostSandbox names a sandbox that keeps a host from being deleted.
type hostSandbox struct {
	ID     string `json:"id"`
	TeamID string `json:"team_id"`
	Status string `json:"status,omitempty"`
}

// deleteHost removes a host. While it has sandboxes that are not stopped
// it answers 409 listing them, unless force=true: then they are marked
// stopped with it. The host's tokens stop working at once; its row stays
// (as deleted) for its sandboxes' history.
func (a *API) deleteHost(w http.ResponseWriter, r *http.Request) {
	hostID := chi.URLParam(r, "id")
	force := false
	if v := r.URL.Query().Get("force"); v != "" {
		f, err := strconv.ParseBool(v)
		if err != nil {
			a.fail(w, r, invalid("force", "must be true or false, got %q", v))
			return
		}
		force = f
	}
	var live []hostSandbox
	err := pgx.BeginTxFunc(r.Context(), a.d.DB, pgx.TxOptions{}, func(tx pgx.Tx) error {
		q := db.New(tx)
		if _, err := q.LockHost(r.Context(), hostID); err != nil {
			return err
		}
		if !force {
			rows, err := q.ListHostLiveSandboxes(r.Context(), hostID)
			if err != nil {
				return fmt.Errorf("list the host's sandboxes: %w", err)
			}
			if len(rows) > 0 {
				for _, s := range rows {
					live = append(live, hostSandbox{ID: s.ID, TeamID: s.TeamID, Status: s.Status})
				}
				return errHostBusy
			}
		} else {
			rows, err := q.StopHostSandboxes(r.Context(), hostID)
			if err != nil {
				return fmt.Errorf("stop the host's sandboxes: %w", err)
			}
			for _, s := range rows {
				live = append(live, hostSandbox{ID: s.ID, TeamID: s.TeamID, Status: s.PreviousStatus})
			}
		}
		return q.MarkHostDeleted(r.Context(), db.MarkHostDeletedParams{ID: hostID, Now: ptr(a.d.Now())})
	})
	switch {
	case isNoRows(err):
		a.fail(w, r, notFound("host", hostID))
		return
	case errors.Is(err, errHostBusy):
		e := conflict(fmt.Sprintf("host %s still has %d sandboxes that are not stopped; destroy them or delete with ?force=true", hostID, len(live)))
		writeJSON(w, e.Status, map[string]any{"error": map[string]string{"code": e.Code, "message": e.Message}, "sandboxes": live})
		return
	case err != nil:
		a.fail(w, r, fmt.Errorf("delete host %s: %w", hostID, err))
		return
	}
	// Watchers and the audit trail learn of each sandbox that went with
	// the host; the consumer finds them stopped already (a no-op).
	actor := principal(r).Actor()
	for _, s := range live {
		a.reqLog(r).Warn("sandbox stopped by forced host deletion", "host_id", hostID, "sandbox_id", s.ID, "team_id", s.TeamID)
		a.publish(context.WithoutCancel(r.Context()), a.reqLog(r), events.Event{
			SandboxID: s.ID, TeamID: s.TeamID, HostID: hostID, From: lifecycle.Status(s.Status), To: lifecycle.Stopped,
			Actor: actor, Error: "its host was deleted",
		})
	}
	// The pool's cached client for the host goes too.
	if f, ok := a.d.Agents.(interface{ Forget(hostID string) }); ok {
		f.Forget(hostID)
	}
	a.reqLog(r).Info("host deleted", "host_id", hostID, "forced", force, "stopped_sandboxes", len(live))
	w.WriteHeader(http.StatusNoContent)
}

var errHostBusy = errors.New("host has live sandboxes")

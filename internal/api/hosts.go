package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/validate"
)

// registrationTTL is how long a registration token stays valid.
const registrationTTL = time.Hour

// Host is a host as the admin API shows it.
type Host struct {
	ID                    string     `json:"id"`
	Name                  string     `json:"name"`
	Address               string     `json:"address"`
	Runtime               string     `json:"runtime"`
	Status                string     `json:"status"`
	VCPUs                 int        `json:"vcpus"`
	MemoryMB              int64      `json:"memory_mb"`
	DiskMB                int64      `json:"disk_mb"`
	ActiveSandboxes       int64      `json:"active_sandboxes"`
	UsedVCPUs             int64      `json:"used_vcpus"`
	UsedMemoryMB          int64      `json:"used_memory_mb"`
	LastHeartbeatAt       *time.Time `json:"last_heartbeat_at"`
	RegistrationExpiresAt *time.Time `json:"registration_expires_at,omitempty"`
	CreatedAt             time.Time  `json:"created_at"`
}

func hostJSON(h db.Host, active int64) Host {
	return Host{
		ID: h.ID, Name: h.Name, Address: h.Address, Runtime: h.Runtime, Status: h.Status,
		VCPUs: int(h.Vcpus), MemoryMB: h.MemoryMb, DiskMB: h.DiskMb, ActiveSandboxes: active,
		LastHeartbeatAt: h.LastHeartbeatAt, RegistrationExpiresAt: h.RegistrationExpiresAt, CreatedAt: h.CreatedAt,
	}
}

func (a *API) createHost(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"name"`
	}
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := validate.Name("name", req.Name, maxHostName); err != nil {
		a.fail(w, r, err)
		return
	}
	token := "wrr_" + id.Secret(24)
	expires := a.d.Now().Add(registrationTTL)
	h, err := a.q.CreateHost(r.Context(), db.CreateHostParams{
		ID: id.New(id.Host), Name: req.Name, RegistrationTokenHash: ptr(hashSecret(token)), RegistrationExpiresAt: &expires,
	})
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23505" {
		a.fail(w, r, conflict(fmt.Sprintf("a host named %q exists already; pick another name", req.Name)))
		return
	}
	if err != nil {
		a.fail(w, r, fmt.Errorf("create host: %w", err))
		return
	}
	a.reqLog(r).Info("host created", "host_id", h.ID, "name", h.Name)
	writeJSON(w, http.StatusCreated, map[string]any{"host": hostJSON(h, 0), "registration_token": token})
}

// maxHostName bounds a host's name, in bytes.
const maxHostName = 100

func (a *API) listHosts(w http.ResponseWriter, r *http.Request) {
	rows, err := a.q.ListHostsWithCounts(r.Context())
	if err != nil {
		a.fail(w, r, fmt.Errorf("list hosts: %w", err))
		return
	}
	out := make([]Host, len(rows))
	for i, h := range rows {
		out[i] = hostJSON(db.Host{
			ID: h.ID, Name: h.Name, Address: h.Address, Runtime: h.Runtime, Status: h.Status,
			Vcpus: h.Vcpus, MemoryMb: h.MemoryMb, DiskMb: h.DiskMb, LastHeartbeatAt: h.LastHeartbeatAt,
			RegistrationExpiresAt: h.RegistrationExpiresAt, CreatedAt: h.CreatedAt,
		}, h.ActiveSandboxes)
		out[i].UsedVCPUs, out[i].UsedMemoryMB = h.UsedVcpus, h.UsedMemoryMb
	}
	writeJSON(w, http.StatusOK, map[string]any{"hosts": out})
}

// hostInfo is what an agent reports about itself at registration and in
// every heartbeat.
type hostInfo struct {
	Address  string `json:"address"`
	Runtime  string `json:"runtime"`
	VCPUs    int    `json:"vcpus"`
	MemoryMB int64  `json:"memory_mb"`
	DiskMB   int64  `json:"disk_mb"`
}

func (h hostInfo) validate() error {
	u, err := url.Parse(h.Address)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return invalid("address", "must be the agent's absolute http(s) URL, got %q", h.Address)
	}
	if h.Runtime == "" || len(h.Runtime) > 32 || strings.ContainsFunc(h.Runtime, unicode.IsSpace) {
		return invalid("runtime", "must name the agent's runtime (for example runc)")
	}
	if h.VCPUs < 0 || h.VCPUs > 1<<16 {
		return invalid("vcpus", "must be between 0 and 65536")
	}
	if h.MemoryMB < 0 {
		return invalid("memory_mb", "must not be negative")
	}
	if h.DiskMB < 0 {
		return invalid("disk_mb", "must not be negative")
	}
	return nil
}

func (a *API) registerHost(w http.ResponseWriter, r *http.Request) {
	// decode matches field names against the struct's own tags, so the
	// body is flat here rather than embedding hostInfo.
	var req struct {
		RegistrationToken string `json:"registration_token"`
		Address           string `json:"address"`
		Runtime           string `json:"runtime"`
		VCPUs             int    `json:"vcpus"`
		MemoryMB          int64  `json:"memory_mb"`
		DiskMB            int64  `json:"disk_mb"`
		// CSR is an optional PEM certificate request (ECDSA P-256) for the
		// agent's server certificate.
		CSR string `json:"csr"`
	}
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	info := hostInfo{Address: req.Address, Runtime: req.Runtime, VCPUs: req.VCPUs, MemoryMB: req.MemoryMB, DiskMB: req.DiskMB}
	if req.RegistrationToken == "" {
		a.fail(w, r, invalid("registration_token", "is required"))
		return
	}
	if err := info.validate(); err != nil {
		a.fail(w, r, err)
		return
	}
	// The certificate is signed before the token is used up, so a bad CSR
	// leaves the registration token valid.
	creds, err := a.signHostCert(req.CSR, req.Address)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	hostToken, refreshToken := newHostTokens()
	hostID, err := a.q.RegisterHost(r.Context(), db.RegisterHostParams{
		RegistrationTokenHash: ptr(hashSecret(req.RegistrationToken)),
		TokenHash:             ptr(hashSecret(hostToken)),
		RefreshTokenHash:      ptr(hashSecret(refreshToken)),
		Address:               req.Address,
		Runtime:               req.Runtime,
		Vcpus:                 int32(req.VCPUs),
		MemoryMb:              req.MemoryMB,
		DiskMb:                req.DiskMB,
		Now:                   ptr(a.d.Now()),
	})
	if isNoRows(err) {
		a.fail(w, r, unauthorized("registration token is invalid, expired or already used; ask an administrator for a new one"))
		return
	}
	if err != nil {
		a.fail(w, r, fmt.Errorf("register host: %w", err))
		return
	}
	a.reqLog(r).Info("host registered", "host_id", hostID, "address", req.Address, "runtime", req.Runtime)
	creds.HostID, creds.HostToken, creds.RefreshToken = hostID, hostToken, refreshToken
	writeJSON(w, http.StatusOK, creds)
}

func (a *API) heartbeat(w http.ResponseWriter, r *http.Request) {
	token := bearer(r)
	if token == "" {
		a.fail(w, r, unauthorized("missing host token: send Authorization: Bearer <host_token>"))
		return
	}
	var req hostInfo
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := req.validate(); err != nil {
		a.fail(w, r, err)
		return
	}
	_, err := a.q.HeartbeatHost(r.Context(), db.HeartbeatHostParams{
		TokenHash: ptr(hashSecret(token)), Address: req.Address, Runtime: req.Runtime,
		Vcpus: int32(req.VCPUs), MemoryMb: req.MemoryMB, DiskMb: req.DiskMB, Now: ptr(a.d.Now()),
	})
	if isNoRows(err) {
		a.fail(w, r, unauthorized("invalid host token"))
		return
	}
	if err != nil {
		a.fail(w, r, fmt.Errorf("record heartbeat: %w", err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func ptr[T any](v T) *T { return &v }

package api

import (
	"fmt"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/validate"
)

// APIKey is an API key as listings show it: never the key itself.
type APIKey struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"`
	UserID     string     `json:"user_id"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	// Key is set only in the answer to its creation.
	Key string `json:"key,omitempty"`
}

// keyPrefix is the displayable start of a key (wrn_ab12…).
func keyPrefix(key string) string { return key[:8] + "…" }

type createKeyRequest struct {
	Name string `json:"name"`
}

// createKey makes a key for the caller in the caller's current team. The
// key is in this answer and nowhere else: only its hash is stored.
func (a *API) createKey(w http.ResponseWriter, r *http.Request) {
	var req createKeyRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	name, err := validate.DisplayName("name", req.Name)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if name == "" {
		a.fail(w, r, invalid("name", "is required, so the key can be told apart in listings"))
		return
	}
	p := principal(r)
	key, keyID := id.NewAPIKey(), id.New(id.APIKey)
	if err := a.q.CreateAPIKey(r.Context(), db.CreateAPIKeyParams{
		ID: keyID, TeamID: p.TeamID, UserID: p.UserID, Name: name, KeyHash: hashSecret(key), KeyPrefix: keyPrefix(key),
	}); err != nil {
		a.fail(w, r, fmt.Errorf("create API key: %w", err))
		return
	}
	writeJSON(w, http.StatusCreated, APIKey{ID: keyID, Name: name, Prefix: keyPrefix(key), UserID: p.UserID, CreatedAt: a.d.Now(), Key: key})
}

func (a *API) listKeys(w http.ResponseWriter, r *http.Request) {
	rows, err := a.q.ListAPIKeys(r.Context(), principal(r).TeamID)
	if err != nil {
		a.fail(w, r, fmt.Errorf("list API keys: %w", err))
		return
	}
	out := make([]APIKey, len(rows))
	for i, k := range rows {
		out[i] = APIKey{ID: k.ID, Name: k.Name, Prefix: k.KeyPrefix, UserID: k.UserID, CreatedAt: k.CreatedAt, LastUsedAt: k.LastUsedAt, RevokedAt: k.RevokedAt}
	}
	writeJSON(w, http.StatusOK, map[string]any{"api_keys": out})
}

// revokeKey revokes a key of the caller's team: one's own, or anyone's for
// owners and admins. It takes effect on the key's next request.
func (a *API) revokeKey(w http.ResponseWriter, r *http.Request) {
	p := principal(r)
	keyID := chi.URLParam(r, "id")
	if !id.Valid(id.APIKey, keyID) {
		a.fail(w, r, notFound("API key", keyID))
		return
	}
	ctx := r.Context()
	k, err := a.q.GetAPIKey(ctx, db.GetAPIKeyParams{ID: keyID, TeamID: p.TeamID})
	if isNoRows(err) {
		a.fail(w, r, notFound("API key", keyID))
		return
	}
	if err != nil {
		a.fail(w, r, fmt.Errorf("get API key: %w", err))
		return
	}
	if k.UserID != p.UserID {
		role, err := a.q.GetMembership(ctx, db.GetMembershipParams{TeamID: p.TeamID, UserID: p.UserID})
		if err != nil && !isNoRows(err) {
			a.fail(w, r, fmt.Errorf("check role: %w", err))
			return
		}
		if role != roleOwner && role != roleAdmin {
			a.fail(w, r, forbidden("only the team's owners and admins can revoke other members' keys"))
			return
		}
	}
	now := a.d.Now()
	if _, err := a.q.RevokeAPIKey(ctx, db.RevokeAPIKeyParams{ID: keyID, TeamID: p.TeamID, Now: &now}); err != nil {
		a.fail(w, r, fmt.Errorf("revoke API key: %w", err))
		return
	}
	// Revoking a revoked key is a no-op, not an error: the outcome is the same.
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) adminListUsers(w http.ResponseWriter, r *http.Request) {
	rows, err := a.q.ListAllUsers(r.Context())
	if err != nil {
		a.fail(w, r, fmt.Errorf("list users: %w", err))
		return
	}
	out := make([]User, len(rows))
	for i, u := range rows {
		out[i] = User{ID: u.ID, Email: u.Email, Name: u.Name, IsAdmin: u.IsAdmin, CreatedAt: u.CreatedAt}
	}
	writeJSON(w, http.StatusOK, map[string]any{"users": out})
}

// AdminTeam is a team as administrators list it.
type AdminTeam struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	Members   int64     `json:"members"`
}

func (a *API) adminListTeams(w http.ResponseWriter, r *http.Request) {
	rows, err := a.q.ListAllTeams(r.Context())
	if err != nil {
		a.fail(w, r, fmt.Errorf("list teams: %w", err))
		return
	}
	out := make([]AdminTeam, len(rows))
	for i, t := range rows {
		out[i] = AdminTeam{ID: t.ID, Name: t.Name, CreatedAt: t.CreatedAt, Members: t.Members}
	}
	writeJSON(w, http.StatusOK, map[string]any{"teams": out})
}

// identityRoutes mounts the authenticated identity routes (inside the
// group that authenticates and audits).
func (a *API) identityRoutes(r chi.Router) {
	r.Get("/me", a.me)
	r.Post("/auth/logout", a.logout)
	r.Post("/auth/logout-all", a.logoutAll)
	r.Get("/teams", a.listTeams)
	r.Post("/teams", a.createTeam)
	r.Post("/teams/{id}/switch", a.switchTeam)
	r.Get("/teams/{id}/members", a.listMembers)
	r.Post("/teams/{id}/members", a.addMember)
	r.Patch("/teams/{id}/members/{user_id}", a.updateMember)
	r.Delete("/teams/{id}/members/{user_id}", a.removeMember)
	r.Post("/api-keys", a.createKey)
	r.Get("/api-keys", a.listKeys)
	r.Delete("/api-keys/{id}", a.revokeKey)
	r.Get("/audit", a.listAudit)
}

// identityAdminRoutes mounts the administrators' identity routes (inside
// the group that requires an administrator).
func (a *API) identityAdminRoutes(r chi.Router) {
	r.Get("/admin/users", a.adminListUsers)
	r.Get("/admin/teams", a.adminListTeams)
}

// publicIdentityRoutes mounts signup and login, which need no credentials.
func (a *API) publicIdentityRoutes(r chi.Router) {
	r.Group(func(r chi.Router) {
		r.Use(a.auditTrail)
		r.Post("/auth/signup", a.signup)
		r.Post("/auth/login", a.login)
	})
}

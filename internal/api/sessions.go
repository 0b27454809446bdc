package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/wrenn/wrenn/pkg/auth"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/validate"
)

// defaultSessionTTL is how long a session lives without use; every use
// slides it forward.
const defaultSessionTTL = 14 * 24 * time.Hour

// User is a user as the API shows it.
type User struct {
	ID        string    `json:"id"`
	Email     string    `json:"email"`
	Name      string    `json:"name"`
	IsAdmin   bool      `json:"is_admin"`
	CreatedAt time.Time `json:"created_at"`
}

// Team is a team as the API shows it; Role is the caller's role in it.
type Team struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	Role      string    `json:"role,omitempty"`
	Current   bool      `json:"current,omitempty"`
}

func (a *API) sessionTTL() time.Duration {
	if a.d.SessionTTL > 0 {
		return a.d.SessionTTL
	}
	return defaultSessionTTL
}

func (a *API) passwordParams() auth.Params {
	if a.d.PasswordParams != nil {
		return *a.d.PasswordParams
	}
	return auth.DefaultParams
}

// dummyHash is verified against when a login names no known user, so an
// unknown email costs as much time as a wrong password.
var dummyHashes sync.Map // auth.Params -> string

func (a *API) dummyHash() string {
	p := a.passwordParams()
	if h, ok := dummyHashes.Load(p); ok {
		return h.(string)
	}
	h, err := auth.HashPassword(id.Secret(16), p)
	if err != nil {
		return ""
	}
	dummyHashes.Store(p, h)
	return h
}

func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

type signupRequest struct {
	Email    string `json:"email"`
	Password string `json:"password"`
	Name     string `json:"name"`
}

// signup creates a user with a password and a personal team it owns, in
// one transaction.
func (a *API) signup(w http.ResponseWriter, r *http.Request) {
	var req signupRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	email, err := auth.NormalizeEmail(req.Email)
	if err != nil {
		a.fail(w, r, invalid("email", "%s", err.Error()))
		return
	}
	if err := auth.ValidatePassword(req.Password); err != nil {
		a.fail(w, r, invalid("password", "%s", err.Error()))
		return
	}
	name, err := validate.DisplayName("name", req.Name)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	hash, err := auth.HashPassword(req.Password, a.passwordParams())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	userID, teamID := id.New(id.User), id.New(id.Team)
	teamName := name
	if teamName == "" {
		teamName = email
	}
	var user db.CreateUserWithPasswordRow
	err = pgx.BeginFunc(r.Context(), a.d.DB, func(tx pgx.Tx) error {
		q := a.q.WithTx(tx)
		var err error
		if user, err = q.CreateUserWithPassword(r.Context(), db.CreateUserWithPasswordParams{ID: userID, Email: email, Name: name, PasswordHash: &hash}); err != nil {
			return err
		}
		if err := q.CreateTeam(r.Context(), db.CreateTeamParams{ID: teamID, Name: teamName + "'s team"}); err != nil {
			return fmt.Errorf("create personal team: %w", err)
		}
		return q.AddTeamMember(r.Context(), db.AddTeamMemberParams{TeamID: teamID, UserID: userID, Role: roleOwner})
	})
	if isUniqueViolation(err) {
		a.fail(w, r, conflict("an account with this email exists already; log in instead"))
		return
	}
	if err != nil {
		a.fail(w, r, fmt.Errorf("sign up: %w", err))
		return
	}
	noteAudit(r, teamID, userID, userID)
	writeJSON(w, http.StatusCreated, map[string]any{
		"user": User{ID: user.ID, Email: user.Email, Name: user.Name, IsAdmin: user.IsAdmin, CreatedAt: user.CreatedAt},
		"team": Team{ID: teamID, Name: teamName + "'s team", CreatedAt: user.CreatedAt, Role: roleOwner},
	})
}

type loginRequest struct {
	Email    string `json:"email"`
	Password string `json:"password"`
}

var errBadLogin = unauthorized("email or password is incorrect")

// login checks a password and starts a cookie session in the user's
// personal (oldest) team. Unknown emails, users without a password and
// wrong passwords all get the same 401 after the same amount of hashing.
func (a *API) login(w http.ResponseWriter, r *http.Request) {
	var req loginRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if req.Password == "" {
		a.fail(w, r, invalid("password", "is required"))
		return
	}
	if len(req.Password) > auth.MaxPasswordLen {
		a.fail(w, r, errBadLogin)
		return
	}
	email, err := auth.NormalizeEmail(req.Email)
	if err != nil {
		a.fail(w, r, invalid("email", "%s", err.Error()))
		return
	}
	ctx := r.Context()
	u, err := a.q.GetUserByEmail(ctx, email)
	if err != nil && !isNoRows(err) {
		a.fail(w, r, fmt.Errorf("look up user: %w", err))
		return
	}
	if err != nil || u.PasswordHash == nil {
		_ = auth.VerifyPassword(req.Password, a.dummyHash())
		a.fail(w, r, errBadLogin)
		return
	}
	noteAudit(r, "", u.ID, "")
	if err := auth.VerifyPassword(req.Password, *u.PasswordHash); err != nil {
		if !errors.Is(err, auth.ErrMismatch) {
			a.reqLog(r).Error("stored password hash is unusable", "user", u.ID, "err", err)
		}
		a.fail(w, r, errBadLogin)
		return
	}
	teamID, err := a.q.FirstTeamOfUser(ctx, u.ID)
	if isNoRows(err) {
		a.fail(w, r, &Error{Status: http.StatusForbidden, Code: CodeForbidden, Message: "your account belongs to no team; ask a team owner to add you"})
		return
	}
	if err != nil {
		a.fail(w, r, fmt.Errorf("find team of user: %w", err))
		return
	}
	now := a.d.Now()
	// Expired sessions are swept here rather than by a worker: logins are
	// rare and the index on expires_at keeps this cheap.
	if _, err := a.q.DeleteExpiredSessions(ctx, now); err != nil {
		a.reqLog(r).Warn("sweep expired sessions", "err", err)
	}
	token, csrf := auth.NewSessionToken(), auth.NewCSRFToken()
	sid := "ses-" + id.Secret(10)
	expires := now.Add(a.sessionTTL())
	if err := a.q.CreateSession(ctx, db.CreateSessionParams{
		ID: sid, UserID: u.ID, TeamID: teamID, TokenHash: auth.HashToken(token), CsrfHash: auth.HashToken(csrf), ExpiresAt: expires, Now: now,
	}); err != nil {
		a.fail(w, r, fmt.Errorf("create session: %w", err))
		return
	}
	noteAudit(r, teamID, u.ID, sid)
	a.setSessionCookies(w, token, csrf, expires)
	writeJSON(w, http.StatusOK, map[string]any{
		"user":       User{ID: u.ID, Email: u.Email, Name: u.Name, IsAdmin: u.IsAdmin, CreatedAt: u.CreatedAt},
		"team_id":    teamID,
		"csrf_token": csrf,
		"expires_at": expires,
	})
}

func (a *API) secureCookies() bool {
	return strings.HasPrefix(strings.ToLower(a.d.PublicURL), "https://")
}

// setSessionCookies sets the session cookie (HttpOnly) and the CSRF cookie
// (readable by the dashboard's JavaScript, which echoes it in X-CSRF-Token).
func (a *API) setSessionCookies(w http.ResponseWriter, token, csrf string, expires time.Time) {
	maxAge := int(time.Until(expires).Seconds())
	if maxAge <= 0 {
		maxAge = int(a.sessionTTL().Seconds())
	}
	for _, c := range []*http.Cookie{
		{Name: auth.SessionCookie, Value: token, HttpOnly: true},
		{Name: auth.CSRFCookie, Value: csrf},
	} {
		c.Path, c.SameSite, c.Secure = "/", http.SameSiteLaxMode, a.secureCookies()
		if token == "" {
			c.MaxAge = -1
		} else {
			c.Expires, c.MaxAge = expires.UTC(), maxAge
		}
		http.SetCookie(w, c)
	}
}

// authSession authenticates the session cookie: the session must exist
// and be unexpired, non-GET requests must carry its CSRF token (double
// submit, bound to the session), and the session's team must still count
// the user as a member (else it falls back to the user's oldest team).
// Each use slides the expiry forward.
func (a *API) authSession(w http.ResponseWriter, r *http.Request, token string) (Principal, error) {
	ctx := r.Context()
	s, err := a.q.GetSessionByHash(ctx, auth.HashToken(token))
	if isNoRows(err) {
		return Principal{}, unauthorized("your session has ended; log in again")
	}
	if err != nil {
		return Principal{}, fmt.Errorf("look up session: %w", err)
	}
	now := a.d.Now()
	if !now.Before(s.ExpiresAt) {
		if err := a.q.DeleteSession(ctx, s.ID); err != nil {
			a.reqLog(r).Warn("delete expired session", "err", err)
		}
		return Principal{}, unauthorized("your session expired; log in again")
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		cookie := ""
		if c, err := r.Cookie(auth.CSRFCookie); err == nil {
			cookie = c.Value
		}
		if !auth.CSRFValid(cookie, r.Header.Get(auth.CSRFHeader), s.CsrfHash) {
			noteActor(ctx, Principal{TeamID: s.TeamID, UserID: s.UserID})
			return Principal{}, &Error{Status: http.StatusForbidden, Code: CodeForbidden,
				Message: "missing or wrong " + auth.CSRFHeader + " header: send the value of the " + auth.CSRFCookie + " cookie with every request that changes something"}
		}
	}
	teamID := s.TeamID
	if _, err := a.q.GetMembership(ctx, db.GetMembershipParams{TeamID: teamID, UserID: s.UserID}); err != nil {
		if !isNoRows(err) {
			return Principal{}, fmt.Errorf("check session's team: %w", err)
		}
		if teamID, err = a.q.FirstTeamOfUser(ctx, s.UserID); isNoRows(err) {
			return Principal{}, unauthorized("your account belongs to no team any more; ask a team owner to add you")
		} else if err != nil {
			return Principal{}, fmt.Errorf("find team of user: %w", err)
		}
		if err := a.q.SetSessionTeam(ctx, db.SetSessionTeamParams{ID: s.ID, TeamID: teamID}); err != nil {
			return Principal{}, fmt.Errorf("move session to another team: %w", err)
		}
	}
	if now.Sub(s.LastSeenAt) > time.Minute {
		expires := now.Add(a.sessionTTL())
		if err := a.q.ExtendSession(ctx, db.ExtendSessionParams{ID: s.ID, Now: now, ExpiresAt: expires}); err != nil {
			a.reqLog(r).Warn("extend session", "err", err)
		} else if c, err := r.Cookie(auth.CSRFCookie); err == nil {
			a.setSessionCookies(w, token, c.Value, expires)
		}
	}
	return Principal{SessionID: s.ID, TeamID: teamID, UserID: s.UserID, Admin: s.IsAdmin}, nil
}

func (a *API) logout(w http.ResponseWriter, r *http.Request) {
	p := principal(r)
	if p.SessionID == "" {
		a.fail(w, r, invalid("session", "logout ends a cookie session; this request used an API key (revoke it with DELETE /v1/api-keys/{id})"))
		return
	}
	if err := a.q.DeleteSession(r.Context(), p.SessionID); err != nil {
		a.fail(w, r, fmt.Errorf("delete session: %w", err))
		return
	}
	noteAudit(r, "", "", p.SessionID)
	a.setSessionCookies(w, "", "", time.Time{})
	w.WriteHeader(http.StatusNoContent)
}

// logoutAll ends every session of the caller's user, on every device.
func (a *API) logoutAll(w http.ResponseWriter, r *http.Request) {
	p := principal(r)
	n, err := a.q.DeleteUserSessions(r.Context(), p.UserID)
	if err != nil {
		a.fail(w, r, fmt.Errorf("delete sessions: %w", err))
		return
	}
	noteAudit(r, "", "", p.UserID)
	if p.SessionID != "" {
		a.setSessionCookies(w, "", "", time.Time{})
	}
	writeJSON(w, http.StatusOK, map[string]int64{"sessions_ended": n})
}

func (a *API) me(w http.ResponseWriter, r *http.Request) {
	p := principal(r)
	ctx := r.Context()
	u, err := a.q.GetUser(ctx, p.UserID)
	if err != nil {
		a.fail(w, r, fmt.Errorf("get user: %w", err))
		return
	}
	teams, err := a.userTeams(ctx, p)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	role := ""
	for _, t := range teams {
		if t.Current {
			role = t.Role
		}
	}
	via := "api_key"
	if p.SessionID != "" {
		via = "session"
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"user":    User{ID: u.ID, Email: u.Email, Name: u.Name, IsAdmin: u.IsAdmin, CreatedAt: u.CreatedAt},
		"team_id": p.TeamID,
		"role":    role,
		"teams":   teams,
		"auth":    via,
	})
}

func (a *API) userTeams(ctx context.Context, p Principal) ([]Team, error) {
	rows, err := a.q.ListUserTeams(ctx, p.UserID)
	if err != nil {
		return nil, fmt.Errorf("list teams of user: %w", err)
	}
	out := make([]Team, 0, len(rows))
	for _, t := range rows {
		// A key acts only for its own team, so it sees only that one.
		if p.SessionID == "" && t.ID != p.TeamID {
			continue
		}
		out = append(out, Team{ID: t.ID, Name: t.Name, CreatedAt: t.CreatedAt, Role: t.Role, Current: t.ID == p.TeamID})
	}
	return out, nil
}

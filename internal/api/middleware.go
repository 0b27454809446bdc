package api

import (
	"context"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/wrenn/wrenn/pkg/auth"
	"github.com/wrenn/wrenn/pkg/config"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/id"
)

var errNoRows = pgx.ErrNoRows

type ctxKey int

const (
	keyRequestID ctxKey = iota
	keyPrincipal
)

// Principal is who an authenticated request acts as, whether it came with
// an API key (KeyID set) or a cookie session (SessionID set): the user, the
// team it acts for, and whether the user is an administrator.
type Principal struct {
	KeyID     string
	SessionID string
	TeamID    string
	UserID    string
	Admin     bool
}

// PrincipalFrom returns the authenticated caller of an API-key route.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(keyPrincipal).(Principal)
	return p, ok
}

// Actor names the caller in lifecycle events: "api:<key id>" for an API
// key, "session:<session id>" for a cookie session.
func (p Principal) Actor() string {
	if p.SessionID != "" {
		return "session:" + p.SessionID
	}
	return "api:" + p.KeyID
}

func principal(r *http.Request) Principal {
	p, _ := PrincipalFrom(r.Context())
	return p
}

// RequestID returns the id of the request in ctx ("" outside a request).
func RequestID(ctx context.Context) string {
	s, _ := ctx.Value(keyRequestID).(string)
	return s
}

func (a *API) reqLog(r *http.Request) *slog.Logger {
	l := a.log.With("request_id", RequestID(r.Context()))
	if p, ok := PrincipalFrom(r.Context()); ok {
		l = l.With("team_id", p.TeamID)
	}
	return l
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// requestContext gives every request an id (returned in X-Request-Id),
// logs it when done, and turns a panic into a logged 500.
func (a *API) requestContext(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rid := "req-" + id.Secret(8)
		w.Header().Set("X-Request-Id", rid)
		r = r.WithContext(context.WithValue(r.Context(), keyRequestID, rid))
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				a.log.Error("handler panicked", "request_id", rid, "panic", v, "stack", string(debug.Stack()))
				if sw.status == 0 {
					a.fail(sw, r, &Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "internal error; the request id in X-Request-Id identifies it in the server log"})
				}
			}
			a.log.Debug("request", "request_id", rid, "method", r.Method, "path", r.URL.Path, "status", sw.status, "duration", time.Since(start))
		}()
		next.ServeHTTP(sw, r)
	})
}

// RequireAPIKey authenticates X-API-Key: the key's SHA-256 is looked up,
// revoked keys and keys of users no longer in the key's team are refused,
// and last_used_at is refreshed at most once a minute. Without X-API-Key, a
// wrenn_session cookie authenticates instead (authSession: expiry, CSRF on
// non-GET, team membership); both give the same Principal. Extensions wrap
// their own routes with it.
func (a *API) RequireAPIKey(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("X-API-Key")
		if key == "" {
			if c, err := r.Cookie(auth.SessionCookie); err == nil && c.Value != "" {
				p, err := a.authSession(w, r, c.Value)
				if err != nil {
					a.fail(w, r, err)
					return
				}
				noteActor(r.Context(), p)
				next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyPrincipal, p)))
				return
			}
			a.fail(w, r, unauthorized("missing API key: send it in the X-API-Key header (or log in for a session cookie)"))
			return
		}
		// A malformed key cannot exist; skip the lookup.
		if !config.ValidAPIKey(key) {
			a.fail(w, r, unauthorized("invalid API key"))
			return
		}
		row, err := a.q.GetAPIKeyByHash(r.Context(), hashSecret(key))
		if isNoRows(err) {
			a.fail(w, r, unauthorized("invalid API key"))
			return
		}
		if err != nil {
			a.fail(w, r, err)
			return
		}
		if row.RevokedAt != nil {
			a.fail(w, r, unauthorized("this API key was revoked; create a new one"))
			return
		}
		now := a.d.Now()
		if row.LastUsedAt == nil || now.Sub(*row.LastUsedAt) > time.Minute {
			if err := a.q.TouchAPIKey(r.Context(), db.TouchAPIKeyParams{ID: row.ID, Now: &now}); err != nil {
				a.reqLog(r).Warn("record API key use", "err", err)
			}
		}
		p := Principal{KeyID: row.ID, TeamID: row.TeamID, UserID: row.UserID, Admin: row.IsAdmin}
		noteActor(r.Context(), p)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyPrincipal, p)))
	})
}

// requireAdmin lets only administrators through. Admin routes say 403
// plainly: their existence is documented, so refusing leaks nothing.
func requireAdmin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !principal(r).Admin {
			writeErr(w, &Error{Status: http.StatusForbidden, Code: CodeForbidden, Message: "this route is for Wrenn administrators only; ask an administrator to do this or to make your user one"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func writeErr(w http.ResponseWriter, e *Error) {
	var body errorBody
	body.Error.Code, body.Error.Message = e.Code, e.Message
	writeJSON(w, e.Status, body)
}

// bearer returns the token of an Authorization: Bearer header.
func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

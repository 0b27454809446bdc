package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/wrenn/wrenn/pkg/audit"
	"github.com/wrenn/wrenn/pkg/db"
)

// auditEntry collects what the audit log records about one state-changing
// request. The audit middleware puts it in the request context before
// authentication runs, so the authentication middleware (whose principal
// lives in a context further down) and handlers fill it in place.
type auditEntry struct {
	mu           sync.Mutex
	teamID       string
	userID       string
	keyID        string
	resourceID   string
	written      bool // a handler stored it in its own transaction
	body         bytes.Buffer
	captureBody  bool
	resourceType string
}

const keyAudit ctxKey = 100

func auditFrom(ctx context.Context) *auditEntry {
	e, _ := ctx.Value(keyAudit).(*auditEntry)
	return e
}

// noteActor records who acts (by the authentication middleware).
func noteActor(ctx context.Context, p Principal) {
	if e := auditFrom(ctx); e != nil {
		e.mu.Lock()
		e.teamID, e.userID, e.keyID = p.TeamID, p.UserID, p.KeyID
		e.mu.Unlock()
	}
}

// noteAudit lets a handler say which resource the request acted on and, for
// requests without a principal (signup, login), who acted.
func noteAudit(r *http.Request, teamID, userID, resourceID string) {
	e := auditFrom(r.Context())
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if teamID != "" {
		e.teamID = teamID
	}
	if userID != "" {
		e.userID = userID
	}
	if resourceID != "" {
		e.resourceID = resourceID
	}
}

// auditAction names the audited operations; other non-GET routes are
// recorded under "<method> <route>".
type auditAction struct {
	action, resource string
	// idFromBody: the resource id is the "id" of the JSON answer (creates).
	idFromBody bool
}

var auditActions = map[string]auditAction{
	"POST /v1/sandboxes":                      {"sandbox.create", "sandbox", true},
	"DELETE /v1/sandboxes/{id}":               {"sandbox.destroy", "sandbox", false},
	"POST /v1/sandboxes/{id}/pause":           {"sandbox.pause", "sandbox", false},
	"POST /v1/sandboxes/{id}/resume":          {"sandbox.resume", "sandbox", false},
	"POST /v1/sandboxes/{id}/exec":            {"sandbox.exec", "sandbox", false},
	"POST /v1/sandboxes/{id}/ping":            {"sandbox.ping", "sandbox", false},
	"POST /v1/sandboxes/{id}/timeout":         {"sandbox.set_timeout", "sandbox", false},
	"POST /v1/api-keys":                       {"api_key.create", "api_key", true},
	"DELETE /v1/api-keys/{id}":                {"api_key.revoke", "api_key", false},
	"POST /v1/teams":                          {"team.create", "team", true},
	"POST /v1/teams/{id}/switch":              {"team.switch", "team", false},
	"POST /v1/teams/{id}/members":             {"member.add", "team_member", false},
	"PATCH /v1/teams/{id}/members/{user_id}":  {"member.update", "team_member", false},
	"DELETE /v1/teams/{id}/members/{user_id}": {"member.remove", "team_member", false},
	"POST /v1/auth/signup":                    {"user.signup", "user", false},
	"POST /v1/auth/login":                     {"session.login", "session", false},
	"POST /v1/auth/logout":                    {"session.logout", "session", false},
	"POST /v1/auth/logout-all":                {"session.logout_all", "user", false},
	"POST /v1/admin/hosts":                    {"host.create", "host", true},
}

// maxCapturedBody bounds what is kept of a create's answer to find its id.
const maxCapturedBody = 8 << 10

type auditWriter struct {
	http.ResponseWriter
	e      *auditEntry
	status int
}

func (w *auditWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *auditWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.e.captureBody && w.e.body.Len()+len(b) <= maxCapturedBody {
		w.e.body.Write(b)
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *auditWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// auditTrail records every state-changing (non-GET) request in the audit
// log once its answer is decided: who, which team, what, on which resource,
// the request id and the outcome. The insert runs after the handler, off
// the request's path; API.Wait waits for pending inserts.
func (a *API) auditTrail(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			next.ServeHTTP(w, r)
			return
		}
		e := &auditEntry{}
		// The route is known only after routing; capture a create's body
		// by path shape, and decide from the pattern afterwards.
		e.captureBody = r.Method == http.MethodPost && strings.Count(strings.Trim(r.URL.Path, "/"), "/") <= 2
		aw := &auditWriter{ResponseWriter: w, e: e}
		r = r.WithContext(context.WithValue(r.Context(), keyAudit, e))
		next.ServeHTTP(aw, r)
		a.recordAudit(r, e, aw.status)
	})
}

func (a *API) recordAudit(r *http.Request, e *auditEntry, status int) {
	pattern := ""
	if rc := chi.RouteContext(r.Context()); rc != nil {
		pattern = rc.RoutePattern()
	}
	if pattern == "" {
		return // no route matched: nothing was changed
	}
	entry := auditEntryOf(r, e, pattern, status, a.d.Now())
	if entry == nil {
		return
	}
	a.auditWG.Add(1)
	go func() {
		defer a.auditWG.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := audit.Record(ctx, a.q, *entry); err != nil {
			a.log.Error("write audit log entry", "err", err, "request_id", entry.RequestID, "action", entry.Action)
		}
	}()
}

// auditEntryOf builds the log entry of e, or nil when a handler stored it
// already.
func auditEntryOf(r *http.Request, e *auditEntry, pattern string, status int, now time.Time) *audit.Entry {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.written {
		return nil
	}
	key := r.Method + " " + pattern
	act, ok := auditActions[key]
	if !ok {
		rest := strings.TrimPrefix(pattern, "/v1/")
		res, _, _ := strings.Cut(rest, "/")
		act = auditAction{action: strings.ToLower(r.Method) + " " + pattern, resource: strings.TrimSuffix(res, "s")}
	}
	rid := e.resourceID
	if rid == "" {
		// A member is named by user_id; {id} there is the team, which
		// the entry's team_id already says.
		if act.resource == "team_member" {
			rid = chi.URLParam(r, "user_id")
		} else {
			rid = chi.URLParam(r, "id")
		}
	}
	if rid == "" && act.idFromBody && status < 300 {
		var body struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(e.body.Bytes(), &body) == nil {
			rid = body.ID
		}
	}
	if status == 0 {
		status = http.StatusOK
	}
	return &audit.Entry{
		TeamID: e.teamID, ActorUserID: e.userID, ActorKeyID: e.keyID,
		Action: act.action, ResourceType: act.resource, ResourceID: rid,
		RequestID: RequestID(r.Context()), Outcome: audit.OutcomeOf(status), Status: status, CreatedAt: now,
	}
}

// writeAuditTx stores r's audit entry inside tx, so the entry commits or
// rolls back with the change it describes; the middleware then skips it.
func (a *API) writeAuditTx(ctx context.Context, q *db.Queries, r *http.Request, status int) error {
	e := auditFrom(r.Context())
	if e == nil {
		return nil
	}
	pattern := chi.RouteContext(r.Context()).RoutePattern()
	entry := auditEntryOf(r, e, pattern, status, a.d.Now())
	if entry == nil {
		return nil
	}
	if err := audit.Record(ctx, q, *entry); err != nil {
		return err
	}
	e.mu.Lock()
	e.written = true
	e.mu.Unlock()
	return nil
}

// AuditEntry is one audit log record as the API shows it.
type AuditEntry = audit.Entry

func (a *API) listAudit(w http.ResponseWriter, r *http.Request) {
	limit := 50
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > audit.MaxPage {
			a.fail(w, r, invalid("limit", "must be an integer between 1 and %d", audit.MaxPage))
			return
		}
		limit = n
	}
	var before int64
	if v := r.URL.Query().Get("before"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			a.fail(w, r, invalid("before", "must be the positive id of an entry (next_before of the previous page)"))
			return
		}
		before = n
	}
	out, err := audit.List(r.Context(), a.q, principal(r).TeamID, before, limit)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	resp := map[string]any{"entries": out}
	if len(out) == limit {
		resp["next_before"] = out[len(out)-1].ID
	}
	writeJSON(w, http.StatusOK, resp)
}

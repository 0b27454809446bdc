package api

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
	"github.com/wrenn/wrenn/pkg/auth"
	"github.com/wrenn/wrenn/pkg/db"
	"github.com/wrenn/wrenn/pkg/id"
	"github.com/wrenn/wrenn/pkg/validate"
)

// Roles of team members. Owners do everything; admins manage members and
// admins but not owners; members use the team's resources.
const (
	roleOwner  = "owner"
	roleAdmin  = "admin"
	roleMember = "member"
)

func validRole(r string) bool { return r == roleOwner || r == roleAdmin || r == roleMember }

// Member is a team membership as the API shows it.
type Member struct {
	UserID    string    `json:"user_id"`
	Email     string    `json:"email"`
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

func forbidden(msg string) *Error {
	return &Error{Status: http.StatusForbidden, Code: CodeForbidden, Message: msg}
}

// teamAccess returns the caller's role in team {id}. A team the caller is
// not a member of is 404, and so is any team but its own for an API key
// (keys are scoped to one team), so team ids cannot be probed.
func (a *API) teamAccess(ctx context.Context, q *db.Queries, p Principal, teamID string) (string, error) {
	if !id.Valid(id.Team, teamID) || (p.SessionID == "" && teamID != p.TeamID) {
		return "", notFound("team", teamID)
	}
	role, err := q.GetMembership(ctx, db.GetMembershipParams{TeamID: teamID, UserID: p.UserID})
	if isNoRows(err) {
		return "", notFound("team", teamID)
	}
	if err != nil {
		return "", fmt.Errorf("check membership of team %s: %w", teamID, err)
	}
	return role, nil
}

func (a *API) listTeams(w http.ResponseWriter, r *http.Request) {
	teams, err := a.userTeams(r.Context(), principal(r))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"teams": teams})
}

type createTeamRequest struct {
	Name string `json:"name"`
}

func (a *API) createTeam(w http.ResponseWriter, r *http.Request) {
	var req createTeamRequest
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
		a.fail(w, r, invalid("name", "is required"))
		return
	}
	p := principal(r)
	teamID := id.New(id.Team)
	err = pgx.BeginFunc(r.Context(), a.d.DB, func(tx pgx.Tx) error {
		q := a.q.WithTx(tx)
		if err := q.CreateTeam(r.Context(), db.CreateTeamParams{ID: teamID, Name: name}); err != nil {
			return err
		}
		return q.AddTeamMember(r.Context(), db.AddTeamMemberParams{TeamID: teamID, UserID: p.UserID, Role: roleOwner})
	})
	if err != nil {
		a.fail(w, r, fmt.Errorf("create team: %w", err))
		return
	}
	t, err := a.q.GetTeam(r.Context(), teamID)
	if err != nil {
		a.fail(w, r, fmt.Errorf("read new team: %w", err))
		return
	}
	writeJSON(w, http.StatusCreated, Team{ID: t.ID, Name: t.Name, CreatedAt: t.CreatedAt, Role: roleOwner})
}

// switchTeam makes {id} the team a cookie session acts for.
func (a *API) switchTeam(w http.ResponseWriter, r *http.Request) {
	p := principal(r)
	if p.SessionID == "" {
		a.fail(w, r, invalid("session", "an API key always acts for its own team; switching needs a cookie session"))
		return
	}
	teamID := chi.URLParam(r, "id")
	role, err := a.teamAccess(r.Context(), a.q, p, teamID)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.q.SetSessionTeam(r.Context(), db.SetSessionTeamParams{ID: p.SessionID, TeamID: teamID}); err != nil {
		a.fail(w, r, fmt.Errorf("switch team: %w", err))
		return
	}
	noteAudit(r, teamID, "", "")
	t, err := a.q.GetTeam(r.Context(), teamID)
	if err != nil {
		a.fail(w, r, fmt.Errorf("read team: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, Team{ID: t.ID, Name: t.Name, CreatedAt: t.CreatedAt, Role: role, Current: true})
}

func (a *API) listMembers(w http.ResponseWriter, r *http.Request) {
	teamID := chi.URLParam(r, "id")
	if _, err := a.teamAccess(r.Context(), a.q, principal(r), teamID); err != nil {
		a.fail(w, r, err)
		return
	}
	rows, err := a.q.ListMembers(r.Context(), teamID)
	if err != nil {
		a.fail(w, r, fmt.Errorf("list members: %w", err))
		return
	}
	out := make([]Member, len(rows))
	for i, m := range rows {
		out[i] = Member{UserID: m.UserID, Email: m.Email, Name: m.Name, Role: m.Role, CreatedAt: m.CreatedAt}
	}
	writeJSON(w, http.StatusOK, map[string]any{"members": out})
}

type addMemberRequest struct {
	Email string `json:"email"`
	Role  string `json:"role"`
}

// canGrant says whether a caller with role actor may give or take away
// role target: owners may anything, admins anything but owner.
func canGrant(actor, target string) bool {
	switch actor {
	case roleOwner:
		return true
	case roleAdmin:
		return target != roleOwner
	}
	return false
}

func (a *API) addMember(w http.ResponseWriter, r *http.Request) {
	p := principal(r)
	teamID := chi.URLParam(r, "id")
	actor, err := a.teamAccess(r.Context(), a.q, p, teamID)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var req addMemberRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	email, err := auth.NormalizeEmail(req.Email)
	if err != nil {
		a.fail(w, r, invalid("email", "%s", err.Error()))
		return
	}
	if req.Role == "" {
		req.Role = roleMember
	}
	if !validRole(req.Role) {
		a.fail(w, r, invalid("role", "must be owner, admin or member, got %q", req.Role))
		return
	}
	if actor == roleMember {
		a.fail(w, r, forbidden("only the team's owners and admins can add members"))
		return
	}
	if !canGrant(actor, req.Role) {
		a.fail(w, r, forbidden("only the team's owners can add owners"))
		return
	}
	u, err := a.q.GetUserByEmail(r.Context(), email)
	if isNoRows(err) {
		a.fail(w, r, &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "no user has the email " + email + "; they must sign up first"})
		return
	}
	if err != nil {
		a.fail(w, r, fmt.Errorf("look up user: %w", err))
		return
	}
	noteAudit(r, "", "", u.ID)
	err = a.q.AddTeamMember(r.Context(), db.AddTeamMemberParams{TeamID: teamID, UserID: u.ID, Role: req.Role})
	if isUniqueViolation(err) {
		a.fail(w, r, conflict(email+" is a member of this team already; change their role with PATCH"))
		return
	}
	if err != nil {
		a.fail(w, r, fmt.Errorf("add member: %w", err))
		return
	}
	m, err := a.q.GetMember(r.Context(), db.GetMemberParams{TeamID: teamID, UserID: u.ID})
	if err != nil {
		a.fail(w, r, fmt.Errorf("read new member: %w", err))
		return
	}
	writeJSON(w, http.StatusCreated, Member{UserID: m.UserID, Email: m.Email, Name: m.Name, Role: m.Role, CreatedAt: m.CreatedAt})
}

type updateMemberRequest struct {
	Role string `json:"role"`
}

var errLastOwner = conflict("this is the team's last owner; make someone else owner first")

// changeMember runs a role change or removal in one transaction that holds
// the team's row, so concurrent changes cannot leave the team without an
// owner; the audit entry commits with it.
func (a *API) changeMember(w http.ResponseWriter, r *http.Request, newRole string) {
	p := principal(r)
	teamID, userID := chi.URLParam(r, "id"), chi.URLParam(r, "user_id")
	ctx := r.Context()
	var out Member
	err := pgx.BeginFunc(ctx, a.d.DB, func(tx pgx.Tx) error {
		q := a.q.WithTx(tx)
		if _, err := a.teamAccess(ctx, q, p, teamID); err != nil {
			return err
		}
		if _, err := q.LockTeam(ctx, teamID); err != nil {
			return fmt.Errorf("lock team: %w", err)
		}
		// Re-read under the lock: the caller's role may just have changed.
		actor, err := a.teamAccess(ctx, q, p, teamID)
		if err != nil {
			return err
		}
		target, err := q.GetMember(ctx, db.GetMemberParams{TeamID: teamID, UserID: userID})
		if isNoRows(err) {
			return notFound("member", userID)
		}
		if err != nil {
			return fmt.Errorf("get member: %w", err)
		}
		self := userID == p.UserID
		switch {
		case newRole == "" && self:
			// Anyone may leave a team.
		case actor == roleMember:
			return forbidden("only the team's owners and admins can change members")
		case !canGrant(actor, target.Role) || (newRole != "" && !canGrant(actor, newRole)):
			return forbidden("only the team's owners can change owners or make owners")
		}
		if target.Role == roleOwner && newRole != roleOwner {
			n, err := q.CountOwners(ctx, teamID)
			if err != nil {
				return fmt.Errorf("count owners: %w", err)
			}
			if n <= 1 {
				return errLastOwner
			}
		}
		if newRole == "" {
			if _, err := q.RemoveMember(ctx, db.RemoveMemberParams{TeamID: teamID, UserID: userID}); err != nil {
				return fmt.Errorf("remove member: %w", err)
			}
		} else if _, err := q.UpdateMemberRole(ctx, db.UpdateMemberRoleParams{TeamID: teamID, UserID: userID, Role: newRole}); err != nil {
			return fmt.Errorf("update member role: %w", err)
		}
		out = Member{UserID: target.UserID, Email: target.Email, Name: target.Name, Role: newRole, CreatedAt: target.CreatedAt}
		status := http.StatusOK
		if newRole == "" {
			status = http.StatusNoContent
		}
		return a.writeAuditTx(ctx, q, r, status)
	})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if newRole == "" {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) updateMember(w http.ResponseWriter, r *http.Request) {
	var req updateMemberRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if !validRole(req.Role) {
		a.fail(w, r, invalid("role", "must be owner, admin or member, got %q", req.Role))
		return
	}
	a.changeMember(w, r, req.Role)
}

func (a *API) removeMember(w http.ResponseWriter, r *http.Request) { a.changeMember(w, r, "") }

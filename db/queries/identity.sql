-- Users, sessions, teams and memberships, API key management, the audit
-- log. Every query that touches a team's data filters by team_id.

-- name: CreateUserWithPassword :one
INSERT INTO users (id, email, name, password_hash) VALUES ($1, $2, $3, $4)
RETURNING id, email, name, is_admin, created_at;

-- name: GetUserByEmail :one
SELECT id, email, name, is_admin, password_hash, created_at FROM users WHERE email = $1;

-- name: GetUser :one
SELECT id, email, name, is_admin, created_at FROM users WHERE id = $1;

-- name: CreateSession :exec
INSERT INTO sessions (id, user_id, team_id, token_hash, csrf_hash, created_at, last_seen_at, expires_at)
VALUES ($1, $2, $3, $4, $5, sqlc.arg(now), sqlc.arg(now), $6);

-- name: GetSessionByHash :one
SELECT s.id, s.user_id, s.team_id, s.csrf_hash, s.last_seen_at, s.expires_at, u.is_admin
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.token_hash = $1;

-- name: ExtendSession :exec
-- Sliding expiry, written at most once a minute per session.
UPDATE sessions SET last_seen_at = sqlc.arg(now), expires_at = sqlc.arg(expires_at)
WHERE id = sqlc.arg(id) AND last_seen_at < sqlc.arg(now)::timestamptz - interval '1 minute';

-- name: SetSessionTeam :exec
UPDATE sessions SET team_id = sqlc.arg(team_id) WHERE id = sqlc.arg(id);

-- name: DeleteSession :exec
DELETE FROM sessions WHERE id = $1;

-- name: DeleteUserSessions :execrows
DELETE FROM sessions WHERE user_id = $1;

-- name: DeleteExpiredSessions :execrows
DELETE FROM sessions WHERE expires_at <= sqlc.arg(now);

-- name: GetMembership :one
SELECT role FROM team_members WHERE team_id = $1 AND user_id = $2;

-- name: FirstTeamOfUser :one
-- The team a session falls back to when its current one dropped the user:
-- the personal team (the oldest membership).
SELECT team_id FROM team_members WHERE user_id = $1 ORDER BY created_at, team_id LIMIT 1;

-- name: ListUserTeams :many
SELECT t.id, t.name, t.created_at, m.role
FROM team_members m JOIN teams t ON t.id = m.team_id
WHERE m.user_id = $1
ORDER BY m.created_at, t.id;

-- name: GetTeam :one
SELECT id, name, created_at FROM teams WHERE id = $1;

-- name: LockTeam :one
-- Serialises membership changes of one team, so two owners demoting each
-- other at once cannot leave it without an owner.
SELECT id FROM teams WHERE id = $1 FOR UPDATE;

-- name: CountOwners :one
SELECT count(*) FROM team_members WHERE team_id = $1 AND role = 'owner';

-- name: ListMembers :many
SELECT m.user_id, u.email, u.name, m.role, m.created_at
FROM team_members m JOIN users u ON u.id = m.user_id
WHERE m.team_id = $1
ORDER BY m.created_at, m.user_id;

-- name: GetMember :one
SELECT m.user_id, u.email, u.name, m.role, m.created_at
FROM team_members m JOIN users u ON u.id = m.user_id
WHERE m.team_id = $1 AND m.user_id = $2;

-- name: UpdateMemberRole :execrows
UPDATE team_members SET role = sqlc.arg(role) WHERE team_id = sqlc.arg(team_id) AND user_id = sqlc.arg(user_id);

-- name: RemoveMember :execrows
DELETE FROM team_members WHERE team_id = $1 AND user_id = $2;

-- name: ListAPIKeys :many
SELECT id, user_id, name, key_prefix, created_at, last_used_at, revoked_at
FROM api_keys WHERE team_id = $1
ORDER BY created_at DESC, id DESC;

-- name: GetAPIKey :one
SELECT id, user_id, revoked_at FROM api_keys WHERE id = $1 AND team_id = $2;

-- name: ListAllUsers :many
SELECT id, email, name, is_admin, created_at FROM users ORDER BY created_at, id;

-- name: ListAllTeams :many
SELECT t.id, t.name, t.created_at, (SELECT count(*) FROM team_members m WHERE m.team_id = t.id) AS members
FROM teams t ORDER BY t.created_at, t.id;

-- name: InsertAudit :exec
INSERT INTO audit_log (team_id, actor_user_id, actor_key_id, action, resource_type, resource_id, request_id, outcome, status, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10);

-- name: ListAudit :many
-- Newest first; before is an exclusive cursor on id (0: from the newest).
SELECT id, team_id, actor_user_id, actor_key_id, action, resource_type, resource_id, request_id, outcome, status, created_at
FROM audit_log
WHERE team_id = sqlc.arg(team_id) AND (sqlc.arg(before)::bigint = 0 OR id < sqlc.arg(before)::bigint)
ORDER BY id DESC
LIMIT sqlc.arg(max_rows);

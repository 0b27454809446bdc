-- Teams, users, memberships and API keys.

-- name: CountUsers :one
SELECT count(*) FROM users;

-- name: CreateTeam :exec
INSERT INTO teams (id, name) VALUES ($1, $2);

-- name: CreateUser :exec
INSERT INTO users (id, email, is_admin) VALUES ($1, $2, $3);

-- name: AddTeamMember :exec
INSERT INTO team_members (team_id, user_id, role) VALUES ($1, $2, $3);

-- name: CreateAPIKey :exec
INSERT INTO api_keys (id, team_id, user_id, name, key_hash, key_prefix)
VALUES ($1, $2, $3, $4, $5, $6);

-- name: APIKeyHashExists :one
SELECT EXISTS (SELECT 1 FROM api_keys WHERE key_hash = $1);

-- name: GetAPIKeyByHash :one
-- The key's team must still count its user as a member: a removed member's
-- keys stop working without a separate revoke.
SELECT k.id, k.team_id, k.user_id, k.revoked_at, k.last_used_at, u.is_admin
FROM api_keys k
JOIN users u ON u.id = k.user_id
JOIN team_members m ON m.team_id = k.team_id AND m.user_id = k.user_id
WHERE k.key_hash = $1;

-- name: TouchAPIKey :exec
-- At most one write a minute per key, so authentication stays a read.
UPDATE api_keys SET last_used_at = sqlc.arg(now)
WHERE id = sqlc.arg(id)
  AND (last_used_at IS NULL OR last_used_at < sqlc.arg(now)::timestamptz - interval '1 minute');

-- name: RevokeAPIKey :execrows
UPDATE api_keys SET revoked_at = sqlc.arg(now)
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND revoked_at IS NULL;

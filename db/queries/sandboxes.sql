-- Sandboxes. Status changes only through the *If queries below: each is a
-- compare-and-set on the expected status, so a writer that lost a race
-- changes nothing and gets no row back (pgx.ErrNoRows). Every query filters
-- by team_id.

-- name: InsertSandbox :one
INSERT INTO sandboxes (id, team_id, host_id, template, status, vcpus, memory_mb, disk_mb, timeout_sec)
VALUES ($1, $2, $3, $4, 'starting', $5, $6, $7, $8)
RETURNING *;

-- name: GetSandbox :one
SELECT * FROM sandboxes WHERE id = $1 AND team_id = $2;

-- name: ListSandboxes :many
SELECT * FROM sandboxes WHERE team_id = $1 ORDER BY created_at DESC, id DESC;

-- name: UpdateSandboxStatusIf :one
UPDATE sandboxes
SET status = sqlc.arg(status), updated_at = now()
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status = sqlc.arg(expected)
RETURNING *;

-- name: UpdateSandboxRunningIf :one
UPDATE sandboxes
SET status = 'running',
    host_ip = sqlc.arg(host_ip),
    guest_ip = sqlc.arg(guest_ip),
    envd_version = sqlc.arg(envd_version),
    disk_mb = sqlc.arg(disk_mb),
    started_at = sqlc.arg(started_at),
    error = '',
    updated_at = now()
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status = sqlc.arg(expected)
RETURNING *;

-- name: UpdateSandboxErrorIf :one
UPDATE sandboxes
SET status = 'error', error = sqlc.arg(error), updated_at = now()
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status = sqlc.arg(expected)
RETURNING *;

-- name: UpdateSandboxStoppedIf :one
UPDATE sandboxes
SET status = 'stopped', stopped_at = sqlc.arg(stopped_at), updated_at = now()
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status = sqlc.arg(expected)
RETURNING *;

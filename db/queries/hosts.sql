-- Hosts: creation by an admin, one-time registration, heartbeats, placement.

-- name: CreateHost :one
INSERT INTO hosts (id, name, status, registration_token_hash, registration_expires_at)
VALUES ($1, $2, 'registering', $3, $4)
RETURNING *;

-- name: RegisterHost :one
-- Single use by construction: the token hash is cleared in the same
-- statement that checks it, so of two concurrent registrations one finds no
-- row.
UPDATE hosts
SET registration_token_hash = NULL,
    registration_expires_at = NULL,
    token_hash = sqlc.arg(token_hash),
    address = sqlc.arg(address),
    runtime = sqlc.arg(runtime),
    vcpus = sqlc.arg(vcpus),
    memory_mb = sqlc.arg(memory_mb),
    disk_mb = sqlc.arg(disk_mb),
    status = 'online',
    last_heartbeat_at = sqlc.arg(now)
WHERE registration_token_hash = sqlc.arg(registration_token_hash)
  AND registration_expires_at > sqlc.arg(now)
  AND status = 'registering'
RETURNING id;

-- name: HeartbeatHost :one
UPDATE hosts
SET address = sqlc.arg(address),
    runtime = sqlc.arg(runtime),
    vcpus = sqlc.arg(vcpus),
    memory_mb = sqlc.arg(memory_mb),
    disk_mb = sqlc.arg(disk_mb),
    status = 'online',
    last_heartbeat_at = sqlc.arg(now)
WHERE token_hash = sqlc.arg(token_hash)
RETURNING id;

-- name: GetHost :one
SELECT * FROM hosts WHERE id = $1;

-- name: ListHostsWithCounts :many
SELECT h.*,
       (SELECT count(*) FROM sandboxes s WHERE s.host_id = h.id AND s.status <> 'stopped')::bigint AS active_sandboxes
FROM hosts h
ORDER BY h.created_at, h.id;

-- name: PickHost :one
-- Least-loaded online host with a recent heartbeat; ties go to the oldest id
-- so placement is deterministic.
SELECT h.*,
       (SELECT count(*) FROM sandboxes s WHERE s.host_id = h.id AND s.status <> 'stopped')::bigint AS active_sandboxes
FROM hosts h
WHERE h.status = 'online' AND h.last_heartbeat_at > sqlc.arg(heartbeat_after)::timestamptz
ORDER BY active_sandboxes, h.id
LIMIT 1;

-- name: GetHostByTokenHash :one
SELECT * FROM hosts WHERE token_hash = $1;

-- name: MarkHostsUnreachable :many
-- Online hosts whose last heartbeat is older than the cutoff.
UPDATE hosts SET status = 'unreachable'
WHERE status = 'online' AND (last_heartbeat_at IS NULL OR last_heartbeat_at < sqlc.arg(cutoff)::timestamptz)
RETURNING id;

-- name: ListHostsByStatus :many
SELECT * FROM hosts WHERE status = $1 ORDER BY id;

-- name: RecordHostSandboxEvent :execrows
-- Zero rows: the event was applied before (a retried callback).
INSERT INTO host_sandbox_events (event_id, host_id, sandbox_id) VALUES ($1, $2, $3)
ON CONFLICT (event_id) DO NOTHING;

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
    refresh_token_hash = sqlc.narg(refresh_token_hash),
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
-- A heartbeat with the host token proves the host holds its newest
-- credentials, so the refresh token they replaced stops working.
UPDATE hosts
SET prev_refresh_token_hash = NULL,
    address = sqlc.arg(address),
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
-- Live hosts with what their sandboxes take (stopped and errored ones hold
-- nothing).
SELECT h.*,
       coalesce(u.sandboxes, 0)::bigint AS active_sandboxes,
       coalesce(u.vcpus, 0)::bigint AS used_vcpus,
       coalesce(u.memory_mb, 0)::bigint AS used_memory_mb
FROM hosts h
LEFT JOIN LATERAL (
    SELECT count(*) AS sandboxes, sum(s.vcpus) AS vcpus, sum(s.memory_mb) AS memory_mb
    FROM sandboxes s
    WHERE s.host_id = h.id AND s.status NOT IN ('stopped', 'error')
) u ON true
WHERE h.status <> 'deleted'
ORDER BY h.created_at, h.id;

-- name: LockPlaceableHosts :many
-- Online hosts with a recent heartbeat, locked (in id order, so concurrent
-- placements cannot deadlock) until the placing transaction ends: two
-- creates cannot both take a host's last room.
SELECT * FROM hosts
WHERE status = 'online' AND last_heartbeat_at > sqlc.arg(heartbeat_after)::timestamptz
ORDER BY id
FOR UPDATE;

-- name: HostUsage :many
-- What each host's sandboxes take, split by paused or not (paused ones count
-- partly). Stopped and errored sandboxes hold nothing; disk_mb 0 means the
-- host's default size, counted by the caller.
SELECT host_id,
       (status = 'paused')::boolean AS paused,
       count(*)::bigint AS sandboxes,
       coalesce(sum(vcpus), 0)::bigint AS vcpus,
       coalesce(sum(memory_mb), 0)::bigint AS memory_mb,
       coalesce(sum(disk_mb), 0)::bigint AS disk_mb,
       count(*) FILTER (WHERE disk_mb = 0)::bigint AS default_disks
FROM sandboxes
WHERE host_id = ANY(sqlc.arg(host_ids)::text[]) AND status NOT IN ('stopped', 'error')
GROUP BY host_id, (status = 'paused');

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

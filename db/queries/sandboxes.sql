-- Sandboxes. Status changes only through the *If queries below: each is a
-- compare-and-set on the expected status and the row's generation, and
-- increments the generation, so a writer that lost a race, or holds an
-- outcome of an operation that is over, changes nothing and gets no row back
-- (pgx.ErrNoRows). Every query filters by team_id.

-- name: InsertSandbox :one
-- Metadata defaults to none, internet access to allowed.
INSERT INTO sandboxes (id, team_id, host_id, template, status, vcpus, memory_mb, disk_mb, timeout_sec, metadata, allow_internet)
VALUES (sqlc.arg(id), sqlc.arg(team_id), sqlc.arg(host_id), sqlc.arg(template), 'starting',
        sqlc.arg(vcpus), sqlc.arg(memory_mb), sqlc.arg(disk_mb), sqlc.arg(timeout_sec),
        COALESCE(sqlc.narg(metadata)::jsonb, '{}'::jsonb), COALESCE(sqlc.narg(allow_internet)::boolean, true))
RETURNING *;

-- name: GetSandbox :one
SELECT * FROM sandboxes WHERE id = $1 AND team_id = $2;

-- name: ListSandboxes :many
-- A page of a team's sandboxes, newest first: with any of statuses (none:
-- all), whose metadata contains every pair of the metadata filter, after
-- the cursor (created_at, id) of the previous page's last row when one is
-- given.
SELECT * FROM sandboxes
WHERE team_id = sqlc.arg(team_id)
  AND (cardinality(sqlc.arg(statuses)::text[]) = 0 OR status = ANY(sqlc.arg(statuses)::text[]))
  AND metadata @> sqlc.arg(metadata)::jsonb
  AND (sqlc.narg(after_created_at)::timestamptz IS NULL
       OR (created_at, id) < (sqlc.narg(after_created_at)::timestamptz, sqlc.arg(after_id)::text))
ORDER BY created_at DESC, id DESC
LIMIT sqlc.arg(max_rows);

-- name: UpdateSandboxStatusIf :one
UPDATE sandboxes
SET status = sqlc.arg(status), updated_at = now(), generation = generation + 1
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status = sqlc.arg(expected)
  AND generation = sqlc.arg(generation)
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
    updated_at = now(),
    generation = generation + 1
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status = sqlc.arg(expected)
  AND generation = sqlc.arg(generation)
RETURNING *;

-- name: UpdateSandboxErrorIf :one
UPDATE sandboxes
SET status = 'error', error = sqlc.arg(error), updated_at = now(), generation = generation + 1
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status = sqlc.arg(expected)
  AND generation = sqlc.arg(generation)
RETURNING *;

-- name: UpdateSandboxStoppedIf :one
UPDATE sandboxes
SET status = 'stopped', stopped_at = sqlc.arg(stopped_at), updated_at = now(), generation = generation + 1
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status = sqlc.arg(expected)
  AND generation = sqlc.arg(generation)
RETURNING *;

-- name: UpdateSandboxMissingIf :one
-- The host stopped answering: remember what the sandbox was.
UPDATE sandboxes
SET status = 'missing', missing_from = sqlc.arg(expected)::text, updated_at = now(), generation = generation + 1
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status = sqlc.arg(expected)
  AND generation = sqlc.arg(generation)
RETURNING *;

-- name: UpdateSandboxTimeout :one
-- The timeout is no status, so it is written directly and leaves the
-- generation alone (no transition is made stale by it); stopped and errored
-- sandboxes keep theirs.
UPDATE sandboxes
SET timeout_sec = sqlc.arg(timeout_sec), updated_at = now()
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status IN ('running', 'paused', 'pausing', 'resuming')
RETURNING *;

-- name: GetSandboxOnHost :one
-- For agent callbacks: a sandbox of another host is "not found".
SELECT * FROM sandboxes WHERE id = sqlc.arg(id) AND host_id = sqlc.arg(host_id);

-- name: ListLiveSandboxesOnHost :many
-- Everything the monitor reconciles on one host: every sandbox not stopped.
SELECT * FROM sandboxes WHERE host_id = $1 AND status <> 'stopped' ORDER BY id;

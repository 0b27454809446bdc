-- Host credentials: refresh, deletion, and the internal CA.

-- name: RefreshHostTokens :one
-- Trades a refresh token for new tokens in one statement; the old host
-- token stops working at once. The refresh token this replaces is kept as
-- prev_refresh_token_hash and is accepted again until a heartbeat with the
-- new host token clears it: if the answer to a refresh is lost, the agent
-- retries with the token it still has instead of being locked out. A retry
-- keeps prev as it was, so only the newest pair and the one the host last
-- confirmed ever work.
UPDATE hosts
SET token_hash = sqlc.arg(token_hash),
    refresh_token_hash = sqlc.arg(new_refresh_token_hash),
    prev_refresh_token_hash = CASE
        WHEN refresh_token_hash = sqlc.arg(refresh_token_hash) THEN refresh_token_hash
        ELSE prev_refresh_token_hash
    END
WHERE (refresh_token_hash = sqlc.arg(refresh_token_hash) OR prev_refresh_token_hash = sqlc.arg(refresh_token_hash))
  AND status <> 'deleted'
RETURNING id, address;

-- name: LockHost :one
SELECT * FROM hosts WHERE id = $1 AND status <> 'deleted' FOR UPDATE;

-- name: ListHostLiveSandboxes :many
-- Sandboxes that still hold something on the host.
SELECT id, team_id, status FROM sandboxes
WHERE host_id = $1 AND status NOT IN ('stopped', 'error')
ORDER BY id;

-- name: StopHostSandboxes :many
-- A forced host deletion: its sandboxes are gone with it. Answers each
-- sandbox's status before, for the events that announce the change.
WITH live AS (
    SELECT sb.id, sb.status FROM sandboxes sb
    WHERE sb.host_id = sqlc.arg(host_id)::text AND sb.status NOT IN ('stopped', 'error')
    FOR UPDATE
)
UPDATE sandboxes s SET status = 'stopped', updated_at = now()
FROM live
WHERE s.id = live.id
RETURNING s.id, s.team_id, live.status AS previous_status;

-- name: MarkHostDeleted :exec
-- Tokens are cleared, so the host's credentials stop working at once.
UPDATE hosts
SET status = 'deleted',
    deleted_at = sqlc.arg(now),
    token_hash = NULL,
    refresh_token_hash = NULL,
    prev_refresh_token_hash = NULL,
    registration_token_hash = NULL,
    registration_expires_at = NULL
WHERE id = sqlc.arg(id);

-- name: GetCA :one
SELECT cert_pem, key_pem FROM pki_ca WHERE id = 1;

-- name: InsertCA :exec
-- The first replica's CA wins; the others read it back.
INSERT INTO pki_ca (id, cert_pem, key_pem) VALUES (1, $1, $2)
ON CONFLICT (id) DO NOTHING;

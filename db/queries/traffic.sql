-- Port traffic: private sandboxes' tokens and the route of a sandbox's ports.

-- name: InsertTrafficToken :exec
INSERT INTO sandbox_traffic_tokens (sandbox_id, token_hash) VALUES (@sandbox_id, @token_hash);

-- name: GetPortRoute :one
-- The sandbox's status, its host's address and, for a private sandbox, the
-- hash of its traffic token.
SELECT s.status, h.address, t.token_hash
FROM sandboxes s
JOIN hosts h ON h.id = s.host_id
LEFT JOIN sandbox_traffic_tokens t ON t.sandbox_id = s.id
WHERE s.id = @sandbox_id;

-- Private sandboxes: their port traffic needs X-Wrenn-Traffic-Token.

-- +goose Up
-- A row makes a sandbox private; no row, public (the default). Only the
-- token's SHA-256 is stored. The row is written before the sandbox's own, so
-- a private sandbox is never reachable without its token; a create that fails
-- after it leaves a row for an id that is never used again. No foreign key
-- for that reason.
CREATE TABLE sandbox_traffic_tokens (
    sandbox_id text PRIMARY KEY,
    token_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE sandbox_traffic_tokens;

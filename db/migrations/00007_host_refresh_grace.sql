-- A refresh whose answer is lost must not lock the host out.

-- +goose Up
-- The refresh token a refresh replaced (hashed). It still trades for new
-- tokens until the host proves it holds the newest ones by sending a
-- heartbeat with its new host token, which clears it; so an agent whose
-- refresh answer never arrived retries with the token it has, and a copy
-- of an old refresh token is worthless once its host has moved on.
ALTER TABLE hosts ADD COLUMN prev_refresh_token_hash text UNIQUE;

-- +goose Down
ALTER TABLE hosts DROP COLUMN prev_refresh_token_hash;

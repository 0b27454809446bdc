-- Users with passwords, cookie sessions, and the audit log.

-- +goose Up
ALTER TABLE users ADD COLUMN name text NOT NULL DEFAULT '';

-- A dashboard login. The cookie carries the token; only its SHA-256 is
-- stored. team_id is the team the session currently acts for (switchable).
-- csrf_hash binds the CSRF token to the session, so a cookie planted by a
-- sibling subdomain (sandbox port URLs live under WRENN_DOMAIN) cannot pass.
CREATE TABLE sessions (
    id           text PRIMARY KEY,
    user_id      text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    team_id      text NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    token_hash   text NOT NULL UNIQUE,
    csrf_hash    text NOT NULL,
    created_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- Who did what to which resource. team_id is NULL for actions outside a
-- team (a failed login for an unknown email). Rows are never updated.
CREATE TABLE audit_log (
    id            bigserial PRIMARY KEY,
    team_id       text,
    actor_user_id text,
    actor_key_id  text,
    action        text NOT NULL,
    resource_type text NOT NULL,
    resource_id   text NOT NULL DEFAULT '',
    request_id    text NOT NULL DEFAULT '',
    outcome       text NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    status        integer NOT NULL,
    created_at    timestamptz NOT NULL
);
CREATE INDEX audit_log_team ON audit_log (team_id, id DESC);

-- +goose Down
DROP TABLE audit_log;
DROP TABLE sessions;
ALTER TABLE users DROP COLUMN name;

-- The first slice of the control plane's state: tenants, their credentials,
-- hosts, templates and sandboxes. Ids are text with a kind prefix (pkg/id).

-- +goose Up
CREATE TABLE teams (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id            text PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    is_admin      boolean NOT NULL DEFAULT false,
    -- NULL until password login exists; API keys need none.
    password_hash text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE team_members (
    team_id    text NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id    text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (team_id, user_id)
);

CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    team_id      text NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id      text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL,
    -- Hex SHA-256 of the key. The key itself is never stored: a lookup by
    -- hash needs no constant-time comparison because the hash of a guess
    -- reveals nothing about the stored hashes.
    key_hash     text NOT NULL UNIQUE,
    -- Shown in listings so users can tell keys apart: wrn_ab12…
    key_prefix   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_team ON api_keys (team_id);

CREATE TABLE hosts (
    id                      text PRIMARY KEY,
    name                    text NOT NULL UNIQUE,
    -- The agent's base URL, as it advertised it.
    address                 text NOT NULL DEFAULT '',
    runtime                 text NOT NULL DEFAULT '',
    status                  text NOT NULL CHECK (status IN ('registering', 'online', 'unreachable')),
    vcpus                   integer NOT NULL DEFAULT 0,
    memory_mb               bigint NOT NULL DEFAULT 0,
    disk_mb                 bigint NOT NULL DEFAULT 0,
    -- One-time registration token (hashed); cleared when used.
    registration_token_hash text UNIQUE,
    registration_expires_at timestamptz,
    -- The host's credential after registration (hashed).
    token_hash              text UNIQUE,
    last_heartbeat_at       timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE templates (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    -- NULL: public, usable by every team.
    team_id    text REFERENCES teams (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX templates_public_name ON templates (name) WHERE team_id IS NULL;
CREATE UNIQUE INDEX templates_team_name ON templates (team_id, name) WHERE team_id IS NOT NULL;

INSERT INTO templates (id, name) VALUES ('tpl-minimal', 'minimal');

CREATE TABLE sandboxes (
    id           text PRIMARY KEY,
    team_id      text NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    host_id      text NOT NULL REFERENCES hosts (id),
    template     text NOT NULL,
    -- Changed only by compare-and-set queries (db/queries/sandboxes.sql).
    status       text NOT NULL CHECK (status IN ('starting', 'running', 'pausing', 'paused', 'resuming',
                                                 'stopping', 'stopped', 'error', 'missing', 'snapshotting')),
    vcpus        integer NOT NULL,
    memory_mb    integer NOT NULL,
    disk_mb      bigint NOT NULL DEFAULT 0,
    timeout_sec  integer NOT NULL,
    host_ip      text NOT NULL DEFAULT '',
    guest_ip     text NOT NULL DEFAULT '',
    envd_version text NOT NULL DEFAULT '',
    error        text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    stopped_at   timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sandboxes_team_created ON sandboxes (team_id, created_at DESC, id DESC);
-- Placement counts a host's live sandboxes.
CREATE INDEX sandboxes_host_live ON sandboxes (host_id) WHERE status <> 'stopped';

-- +goose Down
DROP TABLE sandboxes;
DROP TABLE templates;
DROP TABLE hosts;
DROP TABLE api_keys;
DROP TABLE team_members;
DROP TABLE users;
DROP TABLE teams;

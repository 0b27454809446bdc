-- Pause/resume, agent callbacks and the host monitor.

-- +goose Up
-- What a sandbox was when its host became unreachable, so the monitor can
-- tell what to restore if the host's live list is ambiguous. NULL unless the
-- sandbox is (or was last) missing.
ALTER TABLE sandboxes ADD COLUMN missing_from text;

-- Agent callbacks are retried, so each event id is applied once: the id is
-- inserted in the same transaction as the transition it causes.
CREATE TABLE host_sandbox_events (
    event_id    text PRIMARY KEY,
    host_id     text NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    sandbox_id  text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX host_sandbox_events_received ON host_sandbox_events (received_at);

-- +goose Down
DROP TABLE host_sandbox_events;
ALTER TABLE sandboxes DROP COLUMN missing_from;

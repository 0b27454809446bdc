-- Resource samples agents flush before a sandbox pauses or is destroyed, so
-- its metrics outlive the agent's in-memory ring.

-- +goose Up
-- One row per sample; the key makes a redelivered flush insert nothing.
CREATE TABLE sandbox_metric_samples (
    sandbox_id   text NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL,
    cpu_percent  double precision NOT NULL,
    memory_bytes bigint NOT NULL,
    disk_bytes   bigint NOT NULL,
    PRIMARY KEY (sandbox_id, at)
);

-- +goose Down
DROP TABLE sandbox_metric_samples;

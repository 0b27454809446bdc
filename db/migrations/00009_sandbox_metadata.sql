-- What a user attaches to a sandbox at create: metadata to find it by, and
-- whether it may reach the internet.

-- +goose Up
-- Free-form string pairs (at most 64, validated by the API); list filters
-- are containment (metadata @> filter), which the GIN index serves.
ALTER TABLE sandboxes ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}'::jsonb
    CHECK (jsonb_typeof(metadata) = 'object');
CREATE INDEX sandboxes_metadata ON sandboxes USING gin (metadata jsonb_path_ops);
-- The host applies it when it creates the sandbox; kept to show it.
ALTER TABLE sandboxes ADD COLUMN allow_internet boolean NOT NULL DEFAULT true;

-- +goose Down
ALTER TABLE sandboxes DROP COLUMN allow_internet;
DROP INDEX sandboxes_metadata;
ALTER TABLE sandboxes DROP COLUMN metadata;

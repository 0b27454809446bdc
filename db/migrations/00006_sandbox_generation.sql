-- A per-row generation for the sandbox state machine's compare-and-set.
--
-- Every status change (the *If queries in db/queries/sandboxes.sql) requires
-- the generation its writer read or was handed and increments it, so a
-- transition applies at most once and never to a later visit of the same
-- status: the status alone cannot tell "pausing, this pause" from "pausing,
-- a later pause" (an A-B-A round trip), the generation can. Lifecycle events
-- carry the generation their transition starts from, so the event consumer
-- applies exactly the compare-and-set its writer did. Generations start at
-- 1; 0 in an event means "unknown" (published before this column existed).

-- +goose Up
ALTER TABLE sandboxes ADD COLUMN generation bigint NOT NULL DEFAULT 1 CHECK (generation > 0);

-- +goose Down
ALTER TABLE sandboxes DROP COLUMN generation;

-- name: TemplateVisible :one
-- A template is usable by a team when it is public or the team's own.
SELECT EXISTS (
    SELECT 1 FROM templates
    WHERE name = sqlc.arg(name) AND (team_id IS NULL OR team_id = sqlc.arg(team_id)::text)
);

-- Flushed sandbox metrics (POST /v1/hosts/sandbox-metrics).

-- name: InsertSandboxMetricSamples :execrows
-- Samples already stored (a retried flush) are skipped.
INSERT INTO sandbox_metric_samples (sandbox_id, at, cpu_percent, memory_bytes, disk_bytes)
SELECT @sandbox_id::text, unnest(@ats::timestamptz[]), unnest(@cpu_percents::float8[]),
    unnest(@memory_bytes::bigint[]), unnest(@disk_bytes::bigint[])
ON CONFLICT (sandbox_id, at) DO NOTHING;

-- name: PruneSandboxMetricSamples :exec
-- Keeps a sandbox's stored samples to the window the agent's ring holds.
DELETE FROM sandbox_metric_samples WHERE sandbox_id = @sandbox_id AND at < @before;

-- name: ListSandboxMetricSamples :many
SELECT at, cpu_percent, memory_bytes, disk_bytes
FROM sandbox_metric_samples
WHERE sandbox_id = @sandbox_id AND at > @since
ORDER BY at;

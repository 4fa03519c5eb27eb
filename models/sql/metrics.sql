-- name: state
-- The state gauges of /metrics: timers active, paused and overdue, the oldest overdue's age, pending deliveries.
-- As /v1/stats defines them (models/sql/reports.sql), over every tenant:
-- active = open and not PAUSED, paused = PAUSED, overdue = next_fire_at has
-- come (a warning, the due time, a step or a retry not recorded yet: the
-- firing backlog). Overdue reads the claim index from its start (an index-only
-- scan over the backlog alone). Active and paused are an index-only scan of the
-- open-timer index, which carries status (migration 0010): its cost grows with
-- the open timers, never with the finished ones, and the caller caches the
-- result (SLA_METRICS_CACHE_SECONDS). Pending deliveries read their partial index.
SELECT
    s.active,
    s.paused,
    o.overdue,
    coalesce(extract(epoch FROM now() - o.oldest), 0)::float AS oldest_overdue_seconds,
    (SELECT count(*) FROM webhook_deliveries WHERE status = 'PENDING') AS deliveries_pending
FROM (
    SELECT count(*) FILTER (WHERE status <> 'PAUSED') AS active,
           count(*) FILTER (WHERE status = 'PAUSED') AS paused
    FROM sla_timers WHERE status IN ('ACTIVE', 'DUE', 'ESCALATED', 'PAUSED')
) s, (
    SELECT count(*) AS overdue, min(next_fire_at) AS oldest
    FROM sla_timers WHERE next_fire_at <= now()
) o

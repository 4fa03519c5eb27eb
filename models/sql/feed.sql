-- The pull feed: a tenant's outbox events in (txid, id) order, up to the horizon.
-- Each statement reads under one snapshot, and the horizon is that snapshot's
-- xmin: every transaction below it has ended, so no event can still appear
-- below it (models/feed.py).

-- name: page
-- Up to :limit wanted events after a position, below the horizon, within :scan events.
-- One statement, so the horizon and the rows come from the same snapshot
-- (pg_current_snapshot() is the statement's own). The explicit tenant_id lets
-- ix_outbox_events_tenant_txid (tenant_id, txid, id) serve both ranges; row-level
-- security says the same. The bound is the :scan-th event past the position
-- (read from the index alone, when there are that many): the page stops there,
-- so a type filter that matches little still answers promptly, and the caller
-- moves its cursor to the bound. Horizon and bound come on every row, and on a
-- single row of NULL events when the page is empty.
WITH horizon AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin
), bound AS MATERIALIZED (
    SELECT txid, id
    FROM outbox_events
    WHERE tenant_id = :tenant_id
      AND (txid, id) > (:after_txid, :after_id)
      AND txid < (SELECT xmin FROM horizon)
    ORDER BY txid, id
    OFFSET :scan - 1
    LIMIT 1
), upto AS MATERIALIZED (
    -- The page's last possible position: the bound, else all the horizon allows.
    SELECT coalesce(b.txid, h.xmin - 1) AS txid,
           coalesce(b.id, 9223372036854775807) AS id
    FROM horizon h LEFT JOIN bound b ON true
), page AS (
    SELECT e.id, e.txid, e.tenant_id, e.event_type, e.payload, e.created_at
    FROM outbox_events e
    WHERE e.tenant_id = :tenant_id
      AND (e.txid, e.id) > (:after_txid, :after_id)
      AND (e.txid, e.id) <= ((SELECT txid FROM upto), (SELECT id FROM upto))
      AND (CAST(:types AS text[]) IS NULL OR e.event_type = ANY (CAST(:types AS text[])))
    ORDER BY e.txid, e.id
    LIMIT :limit
)
SELECT h.xmin AS horizon, b.txid AS bound_txid, b.id AS bound_id,
       p.id, p.txid, p.tenant_id, p.event_type, p.payload, p.created_at
FROM horizon h
LEFT JOIN bound b ON true
LEFT JOIN page p ON true
ORDER BY p.txid, p.id

-- name: horizon
-- The current snapshot's xmin: every transaction below it has ended.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint

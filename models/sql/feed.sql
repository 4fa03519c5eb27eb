-- The pull feed: a tenant's outbox events in (txid, id) order, up to the horizon.
-- Each statement reads under one snapshot, and the horizon is that snapshot's
-- xmin: every transaction below it has ended, so no event can still appear
-- below it (models/feed.py).

-- name: page
-- Up to :limit wanted events after a position, below the horizon, within :scan events.
-- One statement, so the horizon and the rows come from the same snapshot
-- (pg_current_snapshot() is the statement's own). The explicit tenant_id lets
-- ix_outbox_events_tenant_txid (tenant_id, txid, id) serve every range; row-level
-- security says the same. The range ends at the horizon, or sooner at the
-- :scan-th event past the position (read from the index alone, when there are
-- that many), so a type filter that matches little still answers promptly.
-- last_* is the range's last event, whatever its type: where the cursor goes
-- when the page is not full (NULL: nothing new, the cursor stays).
-- They come on every row, and on a single row of NULL events when the page is empty.
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
    SELECT coalesce(b.txid, h.xmin - 1) AS txid,
           coalesce(b.id, 9223372036854775807) AS id
    FROM horizon h LEFT JOIN bound b ON true
), last AS MATERIALIZED (
    SELECT txid, id
    FROM outbox_events
    WHERE tenant_id = :tenant_id
      AND (txid, id) > (:after_txid, :after_id)
      AND (txid, id) <= ((SELECT txid FROM upto), (SELECT id FROM upto))
    ORDER BY txid DESC, id DESC
    LIMIT 1
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
SELECT l.txid AS last_txid, l.id AS last_id,
       p.id, p.txid, p.tenant_id, p.event_type, p.payload, p.created_at
FROM (SELECT) AS one
LEFT JOIN last l ON true
LEFT JOIN page p ON true
ORDER BY p.txid, p.id

-- name: horizon
-- The current snapshot's xmin: every transaction below it has ended.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint

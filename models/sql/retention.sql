-- Retention (models/retention.py): finished data deleted in bounded batches.
--
-- Each statement is one short transaction over at most :batch candidate rows,
-- walked in index order from a keyset cursor, and locks only the rows it
-- deletes (SKIP LOCKED: a row some worker holds is left for the next run).
-- The firing path's rows (open timers, pending deliveries) never qualify, so
-- it never waits on retention. Runs as the maintenance role (every tenant).

-- name: retention_tenants
-- The tenants whose stats have been folded at least once, with their fold positions.
-- A tenant never folded has nothing that may go yet: its stats still count
-- everything live.
SELECT p.tenant_id, p.txid AS pos_txid, p.event_id AS pos_event_id, p.rows_txid
FROM sla_stats_positions p
ORDER BY p.tenant_id

-- name: delete_delivered_events
-- Delete up to :batch of a tenant's oldest events that are folded, delivered and past the cutoff.
-- An event goes with its deliveries and their attempts (ON DELETE CASCADE)
-- when it was created before :cutoff, is behind the stats fold's position
-- (its close, if it is one, is in the rollup for good), and every delivery of
-- it is DELIVERED: a PENDING one is still to be sent, a FAILED one is a dead
-- letter an operator may replay. The walk is the feed's order (txid, id) on
-- ix_outbox_events_tenant_txid, which is also roughly creation order: the
-- caller stops at the first batch with nothing older than the cutoff.
WITH candidates AS MATERIALIZED (
    SELECT e.txid, e.id, e.created_at
    FROM outbox_events e
    WHERE e.tenant_id = :tenant
      AND (e.txid, e.id) > (:after_txid, :after_id)
      AND (e.txid, e.id) <= (:pos_txid, :pos_event_id)
    ORDER BY e.txid, e.id
    LIMIT :batch
),
doomed AS MATERIALIZED (
    SELECT e.id
    FROM outbox_events e
    WHERE e.tenant_id = :tenant
      AND e.id IN (SELECT c.id FROM candidates c WHERE c.created_at < :cutoff)
      AND NOT EXISTS (
          SELECT FROM webhook_deliveries d
          WHERE d.event_id = e.id AND d.status <> 'DELIVERED')
    FOR UPDATE OF e SKIP LOCKED
),
gone AS (
    DELETE FROM outbox_events e USING doomed d
    WHERE e.id = d.id AND e.tenant_id = :tenant
    RETURNING 1
),
last AS (
    SELECT txid, id FROM candidates ORDER BY txid DESC, id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM gone) AS deleted,
       (SELECT count(*) FROM candidates) AS scanned,
       (SELECT count(*) FROM candidates WHERE created_at < :cutoff) AS old,
       (SELECT txid FROM last) AS last_txid,
       (SELECT id FROM last) AS last_id

-- name: delete_finished_timers
-- Delete up to :batch of a tenant's timers closed before the cutoff, with their step and warning rows.
-- A timer goes (its steps and warnings by ON DELETE CASCADE, found through
-- their (tenant_id, timer_id) unique indexes) when it is COMPLETED or
-- CANCELLED, closed before :cutoff, not dead-lettered (processing FAILED) nor
-- claimed, none of its events is left (events go first, once delivered and
-- folded: so its close is in the stats rollup and nothing is still to be sent
-- about it), and its step and warning rows are folded (txid at or below the
-- fold's rows_txid). The rollup is never touched: the stats of the hours and
-- days it covers stay as they were. The walk is started_at order on
-- ix_sla_timers_tenant_started (a timer closes after it starts, so nothing
-- started after the cutoff can qualify).
WITH candidates AS MATERIALIZED (
    SELECT t.id, t.started_at
    FROM sla_timers t
    WHERE t.tenant_id = :tenant
      AND t.started_at < :cutoff
      AND (t.started_at, t.id) > (:after_started, :after_id)
    ORDER BY t.started_at, t.id
    LIMIT :batch
),
doomed AS MATERIALIZED (
    SELECT t.id
    FROM sla_timers t
    WHERE t.tenant_id = :tenant
      AND t.id IN (SELECT c.id FROM candidates c)
      AND t.status IN ('COMPLETED', 'CANCELLED')
      AND coalesce(t.completed_at, t.cancelled_at) < :cutoff
      AND t.processing_status NOT IN ('FAILED', 'PROCESSING')
      AND NOT EXISTS (
          SELECT FROM outbox_events e WHERE e.timer_id = t.id AND e.tenant_id = :tenant)
      AND NOT EXISTS (
          SELECT FROM sla_escalation_events s
          WHERE s.tenant_id = :tenant AND s.timer_id = t.id AND s.txid > :rows_txid)
      AND NOT EXISTS (
          SELECT FROM sla_timer_warnings w
          WHERE w.tenant_id = :tenant AND w.timer_id = t.id AND w.txid > :rows_txid)
    FOR UPDATE OF t SKIP LOCKED
),
gone AS (
    DELETE FROM sla_timers t USING doomed d
    WHERE t.id = d.id AND t.tenant_id = :tenant
    RETURNING 1
),
last AS (
    SELECT started_at, id FROM candidates ORDER BY started_at DESC, id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM gone) AS deleted,
       (SELECT count(*) FROM candidates) AS scanned,
       (SELECT started_at FROM last) AS last_started,
       (SELECT id FROM last) AS last_id

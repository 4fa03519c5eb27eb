-- Reports: a timer's timeline (the audit of what happened to it) and a
-- tenant's compliance stats (models/timeline.py, models/stats.py).
--
-- Every statement names the tenant in its predicates as well as relying on
-- row-level security: the predicates are what the indexes are searched by.

-- The compliance stats (models/stats.py) count the timers *started* in a range.
-- What never changes once written is folded into sla_stats_rollup, by UTC hour
-- and by UTC day of the timer's started_at (hours 1 and 24) and contract, as
-- counters (kind, key, outcome):
--   completed_within / completed_late / cancelled / superseded   (at the close)
--   ttc, key = time to complete in seconds, rounded up to the grid of
--            sla_stats_ttc_bin (migration 0007: every second to 100 s, then two
--            significant digits)                                 (at the close)
--   step, key = step, outcome = SUCCESS / FAILED / SKIPPED       (each step row)
--   warning, key = threshold, outcome = SENT / SKIPPED           (each warning row)
-- A closed timer (COMPLETED or CANCELLED) never changes again; step and
-- warning rows are never updated. Closes are found through their outbox
-- events, in the pull feed's (txid, id) order (models/feed.py); step and
-- warning rows through their own txid. Either way only below the snapshot's
-- horizon, where every transaction has ended, so nothing is folded twice or
-- missed. fold_stats, rebuild_stats and stats spell a close's figures and a
-- row's bucket alike: a change to one is a change to all three.

-- name: timeline_timer
-- The timer a timeline is asked for (none: another tenant's, or no such timer).
SELECT id, lead_id, sla_contract_id, status FROM sla_timers WHERE tenant_id = :tenant AND id = :id

-- name: timeline
-- A timer's audit entries from its events, step rows and warning rows, in order.
-- Steps and warnings come from their own rows, which carry the outcome (a
-- skipped step or warning has no event), so the sla.escalation.triggered and
-- sla.timer.warning events are left out rather than shown twice. A cancel
-- with reason "superseded" is shown as such, naming the timer that replaced
-- it: the first of the lead and contract's timers created at or after the
-- cancel (the supersede and the new start share one transaction). The new
-- timer's started entry names the timer it replaced the same way round.
--
-- rank orders entries at the same instant: what happened first comes first,
-- and the steps and warnings a close records as SKIPPED come after the close.
-- The events are found through ix_outbox_events_timer_id (migration 0007).
WITH timer AS MATERIALIZED (
    SELECT * FROM sla_timers WHERE tenant_id = :tenant AND id = :id
),
events AS (
    SELECT CASE e.event_type
               WHEN 'sla.timer.started' THEN 'started'
               WHEN 'sla.timer.due' THEN 'due'
               WHEN 'sla.timer.paused' THEN 'paused'
               WHEN 'sla.timer.resumed' THEN 'resumed'
               WHEN 'sla.timer.completed' THEN 'completed'
               WHEN 'sla.timer.cancelled' THEN
                   CASE WHEN e.payload ->> 'reason' = 'superseded' THEN 'superseded'
                        ELSE 'cancelled' END
               WHEN 'sla.timer.failed' THEN 'failed'
               WHEN 'sla.timer.retried' THEN 'retried'
           END AS kind,
           e.created_at AS at, e.correlation_id,
           e.payload - ARRAY['type', 'timer_id', 'lead_id', 'sla_contract_id',
                             'correlation_id', 'occurred_at', 'escalation_steps',
                             'metadata'] AS details,
           e.id AS seq
    FROM outbox_events e, timer t
    WHERE e.tenant_id = :tenant AND e.timer_id = t.id
      AND e.event_type NOT IN ('sla.escalation.triggered', 'sla.timer.warning')
),
entries AS (
    SELECT ev.kind, ev.at, ev.correlation_id,
           CASE ev.kind
               WHEN 'started' THEN ev.details || jsonb_build_object('supersedes', (
                   SELECT o.id FROM sla_timers o
                   WHERE o.tenant_id = t.tenant_id AND o.lead_id = t.lead_id
                     AND o.sla_contract_id = t.sla_contract_id AND o.id <> t.id
                     AND o.cancel_reason = 'superseded' AND o.cancelled_at <= t.created_at
                     AND NOT EXISTS (
                         SELECT FROM sla_timers n
                         WHERE n.tenant_id = o.tenant_id AND n.lead_id = o.lead_id
                           AND n.sla_contract_id = o.sla_contract_id AND n.id <> o.id
                           AND n.created_at >= o.cancelled_at AND n.created_at < t.created_at)
                   ORDER BY o.cancelled_at DESC LIMIT 1))
               WHEN 'superseded' THEN ev.details || jsonb_build_object('superseded_by', (
                   SELECT n.id FROM sla_timers n
                   WHERE n.tenant_id = t.tenant_id AND n.lead_id = t.lead_id
                     AND n.sla_contract_id = t.sla_contract_id AND n.id <> t.id
                     AND n.created_at >= t.cancelled_at
                   ORDER BY n.created_at LIMIT 1))
               ELSE ev.details
           END AS details,
           CASE ev.kind
               WHEN 'started' THEN 0 WHEN 'resumed' THEN 1 WHEN 'due' THEN 3
               WHEN 'failed' THEN 5 WHEN 'retried' THEN 6 WHEN 'paused' THEN 7
               ELSE 8  -- completed, cancelled, superseded
           END AS rank,
           0 AS step, 0 AS repeat, ev.seq
    FROM events ev, timer t
    UNION ALL
    SELECT 'warning', w.recorded_at, w.correlation_id,
           jsonb_build_object('threshold', w.threshold, 'outcome', w.outcome,
                              'scheduled_at', w.scheduled_at),
           CASE w.outcome WHEN 'SENT' THEN 2 ELSE 9 END, w.threshold, 0, 0
    FROM sla_timer_warnings w, timer t
    WHERE w.tenant_id = :tenant AND w.timer_id = t.id
    UNION ALL
    SELECT 'step', s.executed_at, s.correlation_id,
           jsonb_build_object('step', s.escalation_step, 'repeat', s.repeat,
                              'outcome', s.outcome, 'action', s.escalation_config -> 'action',
                              'target', s.escalation_config -> 'target',
                              'error', s.error_message),
           CASE s.outcome WHEN 'SKIPPED' THEN 9 ELSE 4 END, s.escalation_step, s.repeat, 0
    FROM sla_escalation_events s, timer t
    WHERE s.tenant_id = :tenant AND s.timer_id = t.id
)
SELECT kind, at, correlation_id, details FROM entries
ORDER BY at, rank, step, repeat, seq

-- name: stats_position
-- Create a tenant's fold position if it has none, and lock it (one fold at a time).
INSERT INTO sla_stats_positions (tenant_id) VALUES (:tenant)
ON CONFLICT (tenant_id) DO UPDATE SET txid = sla_stats_positions.txid
RETURNING txid AS pos_txid, event_id AS pos_event_id, rows_txid

-- name: fold_stats
-- Fold the closes of up to :batch events past the position, and the step and warning rows since.
-- The events of every type are read (and passed) so the position moves; it
-- goes to the last event read when the batch is full, else past the horizon,
-- as the feed's cursor does. Rows: every one whose transaction is past
-- rows_txid and below the horizon. Runs after stats_position, in its
-- transaction (the position row is locked), with the positions it returned
-- as parameters: the planner then sees how few rows are past them.
WITH horizon AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin
),
batch AS MATERIALIZED (
    SELECT e.txid, e.id, e.timer_id, e.event_type
    FROM outbox_events e
    WHERE e.tenant_id = :tenant
      AND (e.txid, e.id) > (:pos_txid, :pos_event_id)
      AND e.txid < (SELECT xmin FROM horizon)
    ORDER BY e.txid, e.id
    LIMIT :batch
),
closed AS MATERIALIZED (
    SELECT t.sla_contract_id, t.started_at, t.status, t.breached, t.completed_at,
           t.cancel_reason
    FROM sla_timers t
    WHERE t.tenant_id = :tenant AND t.status IN ('COMPLETED', 'CANCELLED')
      AND t.id IN (SELECT timer_id FROM batch
                   WHERE event_type IN ('sla.timer.completed', 'sla.timer.cancelled'))
),
rows AS MATERIALIZED (
    SELECT 'step' AS kind, s.timer_id, s.escalation_step AS key, s.outcome
    FROM sla_escalation_events s
    WHERE s.tenant_id = :tenant AND s.txid > :rows_txid
      AND s.txid < (SELECT xmin FROM horizon)
    UNION ALL
    SELECT 'warning', w.timer_id, w.threshold, w.outcome
    FROM sla_timer_warnings w
    WHERE w.tenant_id = :tenant AND w.txid > :rows_txid
      AND w.txid < (SELECT xmin FROM horizon)
),
figures AS (
    SELECT c.sla_contract_id, c.started_at, f.kind, f.key, f.outcome
    FROM closed c
    CROSS JOIN LATERAL (
        SELECT CASE WHEN c.status = 'CANCELLED' THEN 'cancelled'
                    WHEN c.breached THEN 'completed_late' ELSE 'completed_within' END,
               0, ''
        UNION ALL
        SELECT 'superseded', 0, '' WHERE c.cancel_reason = 'superseded'
        UNION ALL
        SELECT 'ttc', sla_stats_ttc_bin(c.started_at, c.completed_at), ''
        WHERE c.status = 'COMPLETED'
    ) AS f(kind, key, outcome)
    UNION ALL
    SELECT t.sla_contract_id, t.started_at, r.kind, r.key, r.outcome
    FROM rows r JOIN sla_timers t ON t.id = r.timer_id AND t.tenant_id = :tenant
),
added AS (
    INSERT INTO sla_stats_rollup AS d
        (tenant_id, hours, bucket, sla_contract_id, kind, key, outcome, n)
    SELECT :tenant, g.hours,
           date_trunc(CASE g.hours WHEN 1 THEN 'hour' ELSE 'day' END, f.started_at, 'UTC'),
           f.sla_contract_id, f.kind, f.key, f.outcome, count(*)
    FROM figures f CROSS JOIN (VALUES (1), (24)) AS g(hours)
    GROUP BY 2, 3, 4, 5, 6, 7
    ON CONFLICT (tenant_id, hours, bucket, sla_contract_id, kind, key, outcome)
    DO UPDATE SET n = d.n + excluded.n
),
last AS (
    SELECT txid, id FROM batch ORDER BY txid DESC, id DESC LIMIT 1
),
moved AS (
    UPDATE sla_stats_positions SET
        txid = CASE WHEN (SELECT count(*) FROM batch) >= :batch THEN (SELECT txid FROM last)
                    ELSE greatest(txid, (SELECT xmin FROM horizon) - 1) END,
        event_id = CASE WHEN (SELECT count(*) FROM batch) >= :batch THEN (SELECT id FROM last)
                        WHEN (SELECT xmin FROM horizon) - 1 >= txid THEN 9223372036854775807
                        ELSE event_id END,
        rows_txid = greatest(rows_txid, (SELECT xmin FROM horizon) - 1),
        folded_at = now()
    WHERE tenant_id = :tenant
)
SELECT (SELECT count(*) FROM batch) + (SELECT count(*) FROM rows) AS events,
       (SELECT count(*) FROM closed) AS closed

-- name: stats_positions_of
-- A tenant's fold positions (none before its first fold: zeros).
SELECT coalesce(max(txid), 0) AS pos_txid, coalesce(max(event_id), 0) AS pos_event_id,
       coalesce(max(rows_txid), 0) AS rows_txid
FROM sla_stats_positions WHERE tenant_id = :tenant

-- name: stats_tenants
-- Every tenant, for the fold (the maintenance role sees them all).
SELECT id FROM tenants ORDER BY id

-- name: clear_stats
-- Forget a tenant's rollup, before rebuild_stats (after stats_position: it is locked).
DELETE FROM sla_stats_rollup WHERE tenant_id = :tenant

-- name: rebuild_stats
-- Fold the tenant's closed timers and rows from the tables themselves; positions go to the horizon.
-- For timers written without events (a bulk load) and for repairs. A close
-- whose event is at or past the horizon, and rows written there, are left to
-- the next fold, which reads from there.
WITH horizon AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin
),
closed AS MATERIALIZED (
    SELECT t.sla_contract_id, t.started_at, t.status, t.breached, t.completed_at,
           t.cancel_reason
    FROM sla_timers t
    WHERE t.tenant_id = :tenant AND t.status IN ('COMPLETED', 'CANCELLED')
      AND NOT EXISTS (
          SELECT FROM outbox_events e
          WHERE e.timer_id = t.id AND e.tenant_id = :tenant
            AND e.event_type IN ('sla.timer.completed', 'sla.timer.cancelled')
            AND e.txid >= (SELECT xmin FROM horizon))
),
rows AS (
    SELECT 'step' AS kind, s.timer_id, s.escalation_step AS key, s.outcome
    FROM sla_escalation_events s
    WHERE s.tenant_id = :tenant AND s.txid < (SELECT xmin FROM horizon)
    UNION ALL
    SELECT 'warning', w.timer_id, w.threshold, w.outcome
    FROM sla_timer_warnings w
    WHERE w.tenant_id = :tenant AND w.txid < (SELECT xmin FROM horizon)
),
figures AS (
    SELECT c.sla_contract_id, c.started_at, f.kind, f.key, f.outcome
    FROM closed c
    CROSS JOIN LATERAL (
        SELECT CASE WHEN c.status = 'CANCELLED' THEN 'cancelled'
                    WHEN c.breached THEN 'completed_late' ELSE 'completed_within' END,
               0, ''
        UNION ALL
        SELECT 'superseded', 0, '' WHERE c.cancel_reason = 'superseded'
        UNION ALL
        SELECT 'ttc', sla_stats_ttc_bin(c.started_at, c.completed_at), ''
        WHERE c.status = 'COMPLETED'
    ) AS f(kind, key, outcome)
    UNION ALL
    SELECT t.sla_contract_id, t.started_at, r.kind, r.key, r.outcome
    FROM rows r JOIN sla_timers t ON t.id = r.timer_id AND t.tenant_id = :tenant
),
added AS (
    INSERT INTO sla_stats_rollup (tenant_id, hours, bucket, sla_contract_id, kind, key, outcome, n)
    SELECT :tenant, g.hours,
           date_trunc(CASE g.hours WHEN 1 THEN 'hour' ELSE 'day' END, f.started_at, 'UTC'),
           f.sla_contract_id, f.kind, f.key, f.outcome, count(*)
    FROM figures f CROSS JOIN (VALUES (1), (24)) AS g(hours)
    GROUP BY 2, 3, 4, 5, 6, 7
),
moved AS (
    UPDATE sla_stats_positions
    SET txid = (SELECT xmin FROM horizon) - 1, event_id = 9223372036854775807,
        rows_txid = (SELECT xmin FROM horizon) - 1, folded_at = now()
    WHERE tenant_id = :tenant
)
SELECT count(*) AS closed FROM closed

-- name: stats
-- The figures of a tenant's timers started in [:from, :to), as (kind, key, outcome, n, at) rows.
-- The range splits in three (models.stats.split): whole UTC days [df, dt),
-- whole hours at either side [hf, df) and [dt, ht), and the minutes at the
-- very ends [from, hf) and [ht, to). Days and hours come from the rollup, plus
-- what its positions (:pos_txid, :pos_event_id, :rows_txid, read by
-- stats_positions_of) have not reached: the closes whose events are past them
-- and the step and warning rows written since. The caller's transaction is
-- REPEATABLE READ, so the positions, the rollup and the rest are read in one
-- snapshot and everything counts once. The bounds and positions are
-- parameters, not a CTE: the planner sees how narrow the ranges are. The ends'
-- minutes are counted from the timers (ix_sla_timers_tenant_started) and
-- their rows. Open timers, whose figures change with time, are read through
-- the open-timer index: every open timer of the tenant, whatever the range,
-- which keeps the planner on that index (open timers are few beside closed);
-- the index carries the columns read here (migration 0010), so this is an
-- index-only scan.
-- Rows: the folded kinds (see above), plus
--   active / paused: open timers, not PAUSED / PAUSED
--   open_breached: open and past due (a paused one: due at or before its pause)
--   overdue: open, next_fire_at <= now (a warning, the due time, a step or a
--            retry has come and the firing path has not recorded it yet);
--            at = the oldest such next_fire_at
--   now: at = the instant the figures are for
WITH bounds AS MATERIALIZED (
    SELECT coalesce(CAST(:now AS timestamptz), now()) AS now
),
rolled AS (
    SELECT d.kind, d.key, d.outcome, d.n
    FROM sla_stats_rollup d
    WHERE d.tenant_id = :tenant AND d.hours = 24 AND d.bucket >= :df AND d.bucket < :dt
      AND (CAST(:contract AS text) IS NULL OR d.sla_contract_id = :contract)
    UNION ALL
    SELECT d.kind, d.key, d.outcome, d.n
    FROM sla_stats_rollup d
    WHERE d.tenant_id = :tenant AND d.hours = 1 AND d.bucket >= :hf AND d.bucket < :df
      AND (CAST(:contract AS text) IS NULL OR d.sla_contract_id = :contract)
    UNION ALL
    SELECT d.kind, d.key, d.outcome, d.n
    FROM sla_stats_rollup d
    WHERE d.tenant_id = :tenant AND d.hours = 1 AND d.bucket >= :dt AND d.bucket < :ht
      AND (CAST(:contract AS text) IS NULL OR d.sla_contract_id = :contract)
),
unfolded AS MATERIALIZED (
    -- The closes past the positions: read from the feed index from the
    -- position on, so their count (a fold interval's), not the tenant's
    -- timers in the range, bounds the work. Left to the planner, the "t.id IN
    -- (events)" below was a probe of the events per closed timer of the range
    -- once it misjudged the row comparison (20 ms at 10k timers).
    SELECT DISTINCT e.timer_id
    FROM outbox_events e
    WHERE e.tenant_id = :tenant AND (e.txid, e.id) > (:pos_txid, :pos_event_id)
      AND e.event_type IN ('sla.timer.completed', 'sla.timer.cancelled')
),
unfolded_rows AS MATERIALIZED (
    -- The step and warning rows written since the fold, found by their own
    -- txid index and each joined to its timer by one primary-key probe below.
    -- As a join, the planner (which cannot see how few rows are past
    -- rows_txid) planned it with parallel workers, whose start cost more
    -- than the scan.
    SELECT 'step' AS kind, s.timer_id, s.escalation_step AS key, s.outcome
    FROM sla_escalation_events s WHERE s.tenant_id = :tenant AND s.txid > :rows_txid
    UNION ALL
    SELECT 'warning', w.timer_id, w.threshold, w.outcome
    FROM sla_timer_warnings w WHERE w.tenant_id = :tenant AND w.txid > :rows_txid
),
ends AS MATERIALIZED (
    -- The timers of the minutes at the ends, whole.
    SELECT t.id, t.started_at, t.status, t.breached, t.completed_at, t.cancel_reason
    FROM sla_timers t
    WHERE t.tenant_id = :tenant AND t.started_at >= :from AND t.started_at < :hf
      AND (CAST(:contract AS text) IS NULL OR t.sla_contract_id = :contract)
    UNION ALL
    SELECT t.id, t.started_at, t.status, t.breached, t.completed_at, t.cancel_reason
    FROM sla_timers t
    WHERE t.tenant_id = :tenant AND t.started_at >= :ht AND t.started_at < :to
      AND (CAST(:contract AS text) IS NULL OR t.sla_contract_id = :contract)
),
closed AS (
    SELECT e.started_at, e.status, e.breached, e.completed_at, e.cancel_reason
    FROM ends e WHERE e.status IN ('COMPLETED', 'CANCELLED')
    UNION ALL
    -- The closes of the rolled-up part not folded yet (LATERAL and LIMIT 1,
    -- which keeps it from being flattened into a join: one probe of the
    -- primary key per close, whatever the estimates).
    SELECT t.started_at, t.status, t.breached, t.completed_at, t.cancel_reason
    FROM unfolded u CROSS JOIN LATERAL (
        SELECT t.started_at, t.status, t.breached, t.completed_at, t.cancel_reason
        FROM sla_timers t
        WHERE t.tenant_id = :tenant AND t.id = u.timer_id
          AND t.status IN ('COMPLETED', 'CANCELLED')
          AND t.started_at >= :hf AND t.started_at < :ht
          AND (CAST(:contract AS text) IS NULL OR t.sla_contract_id = :contract)
        LIMIT 1
    ) AS t
),
live AS (
    SELECT f.kind, f.key, f.outcome, count(*) AS n
    FROM closed c
    CROSS JOIN LATERAL (
        SELECT CASE WHEN c.status = 'CANCELLED' THEN 'cancelled'
                    WHEN c.breached THEN 'completed_late' ELSE 'completed_within' END,
               0, ''
        UNION ALL
        SELECT 'superseded', 0, '' WHERE c.cancel_reason = 'superseded'
        UNION ALL
        SELECT 'ttc', sla_stats_ttc_bin(c.started_at, c.completed_at), ''
        WHERE c.status = 'COMPLETED'
    ) AS f(kind, key, outcome)
    GROUP BY 1, 2, 3
    UNION ALL
    -- The rows of the ends' timers, and the rolled-up part's rows not folded yet.
    -- (LATERAL: one probe of each table per timer, whatever the estimates.)
    SELECT r.kind, r.key, r.outcome, count(*)
    FROM ends e CROSS JOIN LATERAL (
        SELECT 'step', s.escalation_step, s.outcome
        FROM sla_escalation_events s WHERE s.tenant_id = :tenant AND s.timer_id = e.id
        UNION ALL
        SELECT 'warning', w.threshold, w.outcome
        FROM sla_timer_warnings w WHERE w.tenant_id = :tenant AND w.timer_id = e.id
    ) AS r(kind, key, outcome)
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT r.kind, r.key, r.outcome, count(*)
    FROM unfolded_rows r CROSS JOIN LATERAL (
        SELECT FROM sla_timers t
        WHERE t.tenant_id = :tenant AND t.id = r.timer_id
          AND t.started_at >= :hf AND t.started_at < :ht
          AND (CAST(:contract AS text) IS NULL OR t.sla_contract_id = :contract)
        LIMIT 1
    ) AS t
    GROUP BY 1, 2, 3
),
every_open AS MATERIALIZED (
    SELECT t.sla_contract_id, t.started_at, t.status, t.due_at, t.paused_at, t.next_fire_at
    FROM sla_timers t
    WHERE t.tenant_id = :tenant AND t.status IN ('ACTIVE', 'DUE', 'ESCALATED', 'PAUSED')
),
open AS MATERIALIZED (
    SELECT o.* FROM every_open o
    WHERE o.started_at >= :from AND o.started_at < :to
      AND (CAST(:contract AS text) IS NULL OR o.sla_contract_id = :contract)
),
open_figures AS (
    SELECT CASE WHEN o.status = 'PAUSED' THEN 'paused' ELSE 'active' END AS kind,
           count(*) AS n, NULL::timestamptz AS at
    FROM open o GROUP BY 1
    UNION ALL
    SELECT 'open_breached', count(*), NULL
    FROM open o, bounds b
    WHERE CASE WHEN o.status = 'PAUSED' THEN o.due_at <= o.paused_at ELSE o.due_at <= b.now END
    UNION ALL
    SELECT 'overdue', count(*), min(o.next_fire_at)
    FROM open o, bounds b WHERE o.next_fire_at <= b.now
    UNION ALL
    SELECT 'now', 0, b.now FROM bounds b
)
SELECT kind, key, outcome, sum(n)::bigint AS n, NULL::timestamptz AS at
FROM (SELECT * FROM rolled UNION ALL SELECT * FROM live) AS c
GROUP BY 1, 2, 3
UNION ALL
SELECT kind, 0, '', n, at FROM open_figures

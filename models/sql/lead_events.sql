-- Lead events: POST /v1/lead-events' record of every event, and the lead's
-- history that orders late ones (models/lead_events.py, models/lead_rules.py).
--
-- "Open" is status IN ('ACTIVE', 'DUE', 'ESCALATED', 'PAUSED'), as in timers.sql.

-- name: lock
-- Take the locks of an event's lead and contract and of its id; the database's clock after them.
-- The lead's key is the one the timer starts take (timers.sql start_timers), so
-- lead events and POST /v1/timers queue for the same lead and contract. The
-- event id's lock makes a second request for the same id wait for the first
-- to commit. Both are taken in key order, as every other taker of these locks
-- does, so no two transactions wait for each other. The clock is read after
-- the wait: an event without occurred_at is dated when it is decided.
WITH locked AS MATERIALIZED (
    SELECT count(pg_advisory_xact_lock(k)) AS n FROM (
        SELECT DISTINCT k FROM unnest(ARRAY[
            hashtextextended(CAST(:tenant AS text) || '/' || :lead || '/' || :contract, 0),
            hashtextextended('lead-event/' || CAST(:tenant AS text) || '/' || :event_id, 0)
        ]) AS k
        ORDER BY k
    ) AS keys
)
SELECT clock_timestamp() AS now FROM locked

-- name: state
-- The stored event of an id, and the history of a lead and contract: its open timer (locked), latest start and latest terminal event.
-- Run after ``lock``, in a statement of its own: its snapshot then sees what
-- the transactions it waited for committed. A timer that a cancel or complete
-- closes meanwhile is not returned (the locking read re-checks the row).
WITH open AS MATERIALIZED (
    SELECT id, started_at FROM sla_timers
    WHERE tenant_id = :tenant AND lead_id = :lead AND sla_contract_id = :contract
      AND status IN ('ACTIVE', 'DUE', 'ESCALATED', 'PAUSED')
    FOR UPDATE
)
SELECT
    stored.event_type AS stored_type, stored.fingerprint AS stored_fingerprint,
    stored.outcome AS stored_outcome, stored.reason AS stored_reason,
    stored.timer_id AS stored_timer_id,
    (SELECT id FROM open) AS open_id,
    (SELECT started_at FROM open) AS open_started_at,
    greatest(
        (SELECT max(started_at) FROM sla_timers
         WHERE tenant_id = :tenant AND lead_id = :lead AND sla_contract_id = :contract),
        (SELECT max(occurred_at) FROM lead_events
         WHERE tenant_id = :tenant AND lead_id = :lead AND sla_contract_id = :contract
           AND event_type = ANY(:starts))
    ) AS latest_start,
    terminal.occurred_at AS terminal_at, terminal.event_type AS terminal_type
FROM (SELECT 1) AS one
LEFT JOIN lead_events AS stored ON stored.tenant_id = :tenant AND stored.event_id = :event_id
LEFT JOIN LATERAL (
    SELECT occurred_at, event_type FROM lead_events
    WHERE tenant_id = :tenant AND lead_id = :lead AND sla_contract_id = :contract
      AND event_type = ANY(:terminals)
    ORDER BY occurred_at DESC
    LIMIT 1
) AS terminal ON true

-- name: insert_event
-- Record an event and what it did.
INSERT INTO lead_events (
    tenant_id, event_id, event_type, lead_id, sla_contract_id, occurred_at,
    fingerprint, outcome, reason, timer_id)
VALUES (:tenant, :event_id, :event_type, :lead, :contract, :occurred_at,
        :fingerprint, :outcome, :reason, :timer_id)

-- The outbox. Rows arrive as one JSON document unpacked by jsonb_to_recordset:
-- one statement and one round trip per batch, whatever its size.

-- name: insert_events
-- Write events; an event already written (same idempotency key) is skipped.
INSERT INTO outbox_events
    (tenant_id, timer_id, event_type, payload, correlation_id, idempotency_key, created_at)
SELECT tenant_id, timer_id, event_type, payload, correlation_id, idempotency_key, created_at
FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
    tenant_id uuid, timer_id uuid, event_type text, payload jsonb,
    correlation_id text, idempotency_key text, created_at timestamptz)
ON CONFLICT (tenant_id, idempotency_key) DO NOTHING

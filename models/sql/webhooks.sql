-- Webhook subscriptions and their deliveries, the API side: create, read,
-- change, delete, rotate the secret, list deliveries and attempts, retry one
-- delivery, replay a window of events.
--
-- Every statement names the tenant: row-level security scopes the API's role
-- too, and the explicit filter keeps the plans on the tenant's indexes. The
-- database's clock (now()) dates every change, as for timers.
--
-- Statements that return a subscription return all its columns plus
-- ``rotation_ends_at``: when the previous secret stops signing, NULL once it
-- has (or when there is none). The web layer never shows the secrets.

-- name: create_subscription
-- A new subscription of the tenant.
INSERT INTO webhook_subscriptions (tenant_id, url, event_types, description, secret)
VALUES (:tenant, :url, CAST(:event_types AS text[]), :description, :secret)
RETURNING *, NULL::timestamptz AS rotation_ends_at

-- name: subscription_by_id
-- One of the tenant's subscriptions.
SELECT *,
       CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
           AS rotation_ends_at
FROM webhook_subscriptions
WHERE tenant_id = :tenant AND id = :id

-- name: lock_subscription
-- One of the tenant's subscriptions, locked for a change.
SELECT * FROM webhook_subscriptions WHERE tenant_id = :tenant AND id = :id FOR UPDATE

-- name: list_subscriptions
-- A page of the tenant's subscriptions, newest first, keyset-paginated on (created_at, id).
SELECT *,
       CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
           AS rotation_ends_at
FROM webhook_subscriptions
WHERE tenant_id = :tenant
  AND (CAST(:c_at AS timestamptz) IS NULL
       OR (created_at, id) < (CAST(:c_at AS timestamptz), CAST(:c_id AS uuid)))
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- name: update_subscription
-- Change the given fields (a NULL flag leaves the field as it is).
-- Enabling a disabled subscription starts it afresh: the disable and the
-- failure streak that caused it are forgotten, so it is not disabled again at
-- its first failure. Disabling it by request records when and why.
UPDATE webhook_subscriptions SET
    url = CASE WHEN :set_url THEN :url ELSE url END,
    event_types = CASE WHEN :set_event_types THEN CAST(:event_types AS text[])
                       ELSE event_types END,
    description = CASE WHEN :set_description THEN :description ELSE description END,
    enabled = CASE WHEN :set_enabled THEN :enabled ELSE enabled END,
    disabled_at = CASE
        WHEN :set_enabled AND :enabled THEN NULL
        WHEN :set_enabled AND enabled THEN now()
        ELSE disabled_at END,
    disabled_reason = CASE
        WHEN :set_enabled AND :enabled THEN NULL
        WHEN :set_enabled AND enabled THEN 'disabled by request'
        ELSE disabled_reason END,
    failing_since = CASE
        WHEN :set_enabled AND :enabled AND NOT enabled THEN NULL
        ELSE failing_since END,
    updated_at = now()
WHERE tenant_id = :tenant AND id = :id
RETURNING *,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
        AS rotation_ends_at

-- name: delete_subscription
-- Delete a subscription; its deliveries and their attempts go with it (cascade).
DELETE FROM webhook_subscriptions WHERE tenant_id = :tenant AND id = :id
RETURNING id

-- name: rotate_secret
-- A new signing secret; the current one signs beside it for :grace seconds.
-- The secret it replaces becomes the previous one, so a rotation inside the
-- grace period of the last drops the oldest secret at once. A grace of 0
-- revokes the current secret now.
UPDATE webhook_subscriptions SET
    previous_secret = CASE WHEN :grace > 0 THEN secret END,
    previous_secret_expires_at = CASE
        WHEN :grace > 0 THEN now() + make_interval(secs => :grace) END,
    secret = :secret,
    updated_at = now()
WHERE tenant_id = :tenant AND id = :id
RETURNING previous_secret_expires_at

-- name: list_deliveries
-- A page of a subscription's deliveries, newest first, keyset-paginated on id.
SELECT d.*, e.event_type
FROM webhook_deliveries d
JOIN outbox_events e ON e.id = d.event_id
WHERE d.tenant_id = :tenant AND d.subscription_id = :subscription
  AND (CAST(:status AS text) IS NULL OR d.status = :status)
  AND (CAST(:after AS bigint) IS NULL OR d.id < :after)
ORDER BY d.id DESC
LIMIT :limit

-- name: delivery_by_id
-- One delivery of one of the tenant's subscriptions.
SELECT d.*, e.event_type
FROM webhook_deliveries d
JOIN outbox_events e ON e.id = d.event_id
WHERE d.tenant_id = :tenant AND d.subscription_id = :subscription AND d.id = :id

-- name: attempts_of
-- A delivery's attempts, oldest first.
SELECT attempt, attempted_at, status_code, duration_ms, error
FROM webhook_attempts
WHERE tenant_id = :tenant AND delivery_id = :delivery
ORDER BY id

-- name: retry_delivery
-- Send a delivery again now. A finished one (DELIVERED or FAILED) starts a
-- fresh retry schedule; a PENDING one is only made due now, keeping its
-- attempts and any claim in flight, so it is not sent twice at once.
UPDATE webhook_deliveries SET
    attempts = CASE WHEN status = 'PENDING' THEN attempts ELSE 0 END,
    next_attempt_at = now(),
    claim_token = CASE WHEN status = 'PENDING' THEN claim_token END,
    lease_expires_at = CASE WHEN status = 'PENDING' THEN lease_expires_at END,
    delivered_at = NULL,
    status = 'PENDING'
WHERE tenant_id = :tenant AND subscription_id = :subscription AND id = :id
RETURNING id

-- name: count_replay
-- How many events a replay would arm, counting no further than :cap.
SELECT count(*) FROM (
    SELECT 1 FROM outbox_events e
    WHERE e.tenant_id = :tenant
      AND e.created_at >= :since
      AND (CAST(:until AS timestamptz) IS NULL OR e.created_at < :until)
      AND (CAST(:sub_types AS text[]) IS NULL OR e.event_type = ANY(CAST(:sub_types AS text[])))
      AND (CAST(:types AS text[]) IS NULL OR e.event_type = ANY(CAST(:types AS text[])))
    LIMIT :cap
) AS window_events

-- name: replay
-- Arm a delivery of every event in the window to the subscription: a new row
-- for an event it never had (also one from before the subscription existed),
-- a fresh retry schedule for one it had. A delivery in flight loses its
-- claim and may be sent twice: receivers deduplicate by webhook-id.
INSERT INTO webhook_deliveries (tenant_id, subscription_id, event_id, timer_id)
SELECT e.tenant_id, CAST(:subscription AS uuid), e.id, e.timer_id
FROM outbox_events e
WHERE e.tenant_id = :tenant
  AND e.created_at >= :since
  AND (CAST(:until AS timestamptz) IS NULL OR e.created_at < :until)
  AND (CAST(:sub_types AS text[]) IS NULL OR e.event_type = ANY(CAST(:sub_types AS text[])))
  AND (CAST(:types AS text[]) IS NULL OR e.event_type = ANY(CAST(:types AS text[])))
ORDER BY e.id
ON CONFLICT (tenant_id, subscription_id, event_id) DO UPDATE SET
    status = 'PENDING',
    attempts = 0,
    next_attempt_at = now(),
    claim_token = NULL,
    lease_expires_at = NULL,
    delivered_at = NULL

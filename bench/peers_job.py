"""The peers' job body: one step row and one event row, in one transaction.

``bench/peers.py`` runs the same burst through peer systems beside our firing
path; each peer's job runs ``JOB`` once. It writes to scratch tables made
``LIKE`` ours (``PEER_TABLES``): the same columns, defaults, check constraints
and indexes as ``sla_escalation_events`` and ``outbox_events``, without what a
row there needs and a job has not (the foreign key to its timer, row-level
security, the outbox's delivery fan-out trigger). The peers therefore write
less per job than a fire does (a fire also claims and updates its timer and
writes a second event): the comparison leans their way.

One statement (two inserts in a data-modifying ``WITH``) is one round trip
and one implicit transaction, the cheapest form of the job for either peer.
Its placeholders are ``$1``..``$4``, which asyncpg and psycopg's
``RawCursor`` both take. No imports beyond the standard library: worker
processes import this module.
"""

from __future__ import annotations

import json
import uuid

PEER_TABLES = """
DROP TABLE IF EXISTS peer_steps, peer_events;
CREATE TABLE peer_steps (LIKE sla_escalation_events INCLUDING ALL);
CREATE TABLE peer_events (LIKE outbox_events INCLUDING ALL);
"""

# $1 tenant, $2 timer (the job's id), $3 lead, $4 correlation id: all text, so
# that both drivers deduce one type per parameter.
JOB = """
WITH step AS (
    INSERT INTO peer_steps (tenant_id, lead_id, timer_id, escalation_step, executed_at,
        outcome, escalation_config, correlation_id, idempotency_key)
    VALUES ($1::text::uuid, $3::text, $2::text::uuid, 1, now(), 'SUCCESS',
        '{"step": 1, "after_seconds": 0, "action": "notify", "target": null}'::jsonb,
        $4::text, $2::text || '-1')
)
INSERT INTO peer_events (tenant_id, event_type, timer_id, payload, correlation_id,
    idempotency_key)
VALUES ($1::text::uuid, 'sla.escalation.triggered', $2::text::uuid,
    jsonb_build_object('type', 'sla.escalation.triggered', 'timer_id', $2::text,
        'lead_id', $3::text,
        'step', '{"step": 1, "after_seconds": 0, "action": "notify", "target": null}'::jsonb,
        'correlation_id', $4::text),
    $4::text, $2::text || ':step:1')
"""

TENANT = "00000000-0000-4000-8000-00000000c0de"


def job_args(i: int) -> list[str]:
    """The arguments of job ``i``: tenant, timer id, lead, correlation id."""
    return [TENANT, str(uuid.uuid4()), f"lead-peer-{i}", f"peer-{i}"]


def encode(args: list[str]) -> bytes:
    return json.dumps(args).encode()


def decode(payload: bytes) -> list[str]:
    return json.loads(payload)

"""The sharding rule (docs/scaling.md), over the migrated schema's catalog:
every primary key, unique constraint, unique index and foreign key of a tenant
table is led by ``tenant_id``, and a foreign key refers to its target by
(tenant_id, ...), so the schema distributes by ``tenant_id`` (Citus) without
change. ``tenants`` and ``api_keys`` are reference tables (small, copied to
every node): a key is looked up by its prefix before the tenant is known.

What still breaks the rule is listed in KNOWN_VIOLATIONS: the test of the full
rule fails (xfail, strict) until the list is empty, and no new violation may
appear meanwhile.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from models.schema import metadata

REFERENCE_TABLES = {"tenants", "api_keys"}

# The bigint/uuid surrogate keys of the event, delivery and timer tables, and
# the webhook tables' keys, which the firing and delivery hot paths use by id
# alone: moving them under tenant_id needs a tenant in those statements (and a
# measurement of P1 and P6) first. docs/scaling.md, "The sharding rule".
KNOWN_VIOLATIONS = {
    "outbox_events: primary key pk_outbox_events (id)",
    "sla_escalation_events: primary key pk_sla_escalation_events (id)",
    "sla_timers: primary key pk_sla_timers (id)",
    "webhook_attempts: foreign key fk_webhook_attempts_delivery_id_webhook_deliveries "
    "(delivery_id) -> webhook_deliveries (id)",
    "webhook_attempts: primary key pk_webhook_attempts (id)",
    "webhook_deliveries: foreign key fk_webhook_deliveries_event_id_outbox_events "
    "(event_id) -> outbox_events (id)",
    "webhook_deliveries: foreign key "
    "fk_webhook_deliveries_subscription_id_webhook_subscriptions "
    "(subscription_id) -> webhook_subscriptions (id)",
    "webhook_deliveries: primary key pk_webhook_deliveries (id)",
    "webhook_deliveries: unique uq_webhook_deliveries_subscription_id_event_id "
    "(subscription_id, event_id)",
    "webhook_subscriptions: primary key pk_webhook_subscriptions (id)",
}

# Keys and unique indexes of the schema's tables, their columns in key order,
# and what a foreign key refers to.
_KEYS = text(
    """
    SELECT c.relname AS table_name, i.relname AS name,
           coalesce(con.contype::text, 'i') AS kind,
           ARRAY(SELECT a.attname::text FROM unnest(x.indkey::int2[]) WITH ORDINALITY k(n, o)
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.n ORDER BY k.o)
               AS columns,
           NULL::text AS target, NULL::text[] AS target_columns
    FROM pg_index x
    JOIN pg_class c ON c.oid = x.indrelid
    JOIN pg_class i ON i.oid = x.indexrelid
    LEFT JOIN pg_constraint con ON con.conindid = x.indexrelid AND con.contype IN ('p', 'u')
    WHERE x.indisunique AND c.relnamespace = current_schema()::regnamespace
      AND c.relname = ANY(:tables)
    UNION ALL
    SELECT c.relname, con.conname, 'f',
           ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.n ORDER BY k.o),
           t.relname,
           ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
                 JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.n ORDER BY k.o)
    FROM pg_constraint con
    JOIN pg_class c ON c.oid = con.conrelid
    JOIN pg_class t ON t.oid = con.confrelid
    WHERE con.contype = 'f' AND c.relnamespace = current_schema()::regnamespace
      AND c.relname = ANY(:tables)
    """
)
KINDS = {"p": "primary key", "u": "unique", "i": "unique index", "f": "foreign key"}


def violations(engine) -> set[str]:
    tenant_tables = sorted(t.name for t in metadata.sorted_tables if t.name not in REFERENCE_TABLES)
    found = set()
    with engine.connect() as conn:
        for r in conn.execute(_KEYS, {"tables": tenant_tables}):
            columns = ", ".join(r.columns)
            if r.kind == "f":
                to_reference = r.target in REFERENCE_TABLES
                led = r.columns[0] == "tenant_id" and (
                    to_reference or r.target_columns[0] == "tenant_id"
                )
                if not led:
                    found.add(
                        f"{r.table_name}: foreign key {r.name} ({columns}) -> "
                        f"{r.target} ({', '.join(r.target_columns)})"
                    )
            elif r.columns[0] != "tenant_id":
                found.add(f"{r.table_name}: {KINDS[r.kind]} {r.name} ({columns})")
    return found


def test_every_table_of_the_schema_holds_tenant_id(engine):
    """A table without tenant_id could not be distributed by it at all."""
    missing = [
        t.name for t in metadata.sorted_tables if t.name != "tenants" and "tenant_id" not in t.c
    ]
    assert missing == []


def test_no_new_violation_of_the_sharding_rule(engine):
    assert violations(engine) - KNOWN_VIOLATIONS == set()


def test_the_known_violations_are_still_there(engine):
    """A fixed one leaves the list, so the list stays the truth."""
    assert KNOWN_VIOLATIONS - violations(engine) == set()


@pytest.mark.xfail(strict=True, reason="KNOWN_VIOLATIONS is not empty yet")
def test_every_key_of_a_tenant_table_is_led_by_tenant_id(engine):
    assert violations(engine) == set()

"""The sharding rule (docs/scaling.md), over the migrated schema's catalog:
every primary key, unique constraint, unique index and foreign key of a tenant
table is led by ``tenant_id``, and a foreign key refers to its target by
(tenant_id, ...), so the schema distributes by ``tenant_id`` (Citus) without
change. ``tenants`` and ``api_keys`` are reference tables (small, copied to
every node): a key is looked up by its prefix before the tenant is known.

Migrations 0008 and 0009 made it true: a new table or key that breaks it fails
here.
"""

from __future__ import annotations

from sqlalchemy import text

from models.schema import metadata

REFERENCE_TABLES = {"tenants", "api_keys"}

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


def test_every_key_of_a_tenant_table_is_led_by_tenant_id(engine):
    assert violations(engine) == set()

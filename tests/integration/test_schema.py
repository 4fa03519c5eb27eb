"""``models/schema.py`` and the migrations describe the same database.

The migrations build the real one; the metadata is what the code and alembic
believe it is. Two checks, on the migrated test database:

- alembic's ``compare_metadata`` (columns, types, nullability, server
  defaults, keys, indexes) reports no difference;
- what alembic does not compare (check constraints' text, index predicates and
  methods, foreign keys' actions, identity columns, storage parameters such as
  the timers' fillfactor) is read from the catalog of the migrated database and
  of a throw-away one built by ``metadata.create_all``, and must be equal.

Row-level security, its policies, roles and grants are not in the metadata:
migration 0002 and 0004 own them (tests/integration/test_tenant_isolation.py
and test_roles.py keep them). Test-only objects (``test_*`` tables such as the
insert-attempt log) are left out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from devtools import processes
from models.config import normalize_database_url
from models.schema import metadata

TABLES = sorted(metadata.tables)

# What alembic's comparison leaves out, per table, from PostgreSQL's own catalog.
CATALOG = {
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint
        WHERE conrelid::regclass::text = ANY(:tables)
        ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef
        FROM pg_indexes
        WHERE schemaname = 'public' AND tablename = ANY(:tables)
        ORDER BY 1, 2""",
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default,
               is_identity, identity_generation
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name = ANY(:tables)
        ORDER BY 1, 2""",
    "storage": """
        SELECT relname, array_to_string(reloptions, ',')
        FROM pg_class
        WHERE relkind = 'r' AND relname = ANY(:tables)
        ORDER BY 1""",
}


def _url(database: str | None = None) -> str:
    url = make_url(normalize_database_url(os.environ["DATABASE_URL"]))
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


def _catalog(url: str) -> dict[str, list[tuple]]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return {
                name: [tuple(row) for row in conn.execute(text(sql), {"tables": TABLES})]
                for name, sql in CATALOG.items()
            }
    finally:
        engine.dispose()


@pytest.fixture
def built_from_metadata() -> Iterator[str]:
    """URL of a throw-away database holding ``metadata.create_all`` alone."""
    name = f"{make_url(os.environ['DATABASE_URL']).database}_metadata"
    server = processes.create_database(os.environ["SLA_TEST_SERVER_URL"], name)
    engine = create_engine(_url(name), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            metadata.create_all(conn)
        yield _url(name)
    finally:
        engine.dispose()
        processes.drop_database(server)


def _not_a_test_object(name, type_, parent_names) -> bool:
    return not (type_ == "table" and name not in metadata.tables and name.startswith("test_"))


def test_alembic_finds_no_difference_between_the_migrations_and_the_metadata(database):
    engine = create_engine(_url(), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_name": _not_a_test_object,
                },
            )
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_the_catalogs_of_the_migrated_and_the_metadata_built_databases_agree(
    database, built_from_metadata
):
    migrated, built = _catalog(_url()), _catalog(built_from_metadata)
    for kind in CATALOG:
        assert migrated[kind], kind
        only_migrated = sorted(set(migrated[kind]) - set(built[kind]))
        only_built = sorted(set(built[kind]) - set(migrated[kind]))
        assert (only_migrated, only_built) == ([], []), (
            f"{kind}: only in the migrations {only_migrated}; only in models/schema.py {only_built}"
        )

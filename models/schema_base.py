"""The schema's shared metadata (naming convention) and helpers, for
models/schema.py and models/schema_policies.py alike."""

from __future__ import annotations

from sqlalchemy import MetaData, text

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


# The writing transaction's id (a 64-bit xid8), for the feed and the stats' fold.
TXID = text("(pg_current_xact_id())::text::bigint")


def in_(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def now():
    return text("now()")

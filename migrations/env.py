"""Alembic environment: the URL comes from DATABASE_URL, like the rest of the service.

An unreachable database ends the command with one line naming it and the fix.
"""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, exc, pool
from sqlalchemy.engine import make_url

from models.config import get_settings
from models.schema import metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    return config.attributes.get("database_url") or get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    try:
        connection = engine.connect()
    except exc.OperationalError as failed:
        url = make_url(_url())
        reason = str(failed.orig).strip().splitlines()[0]
        raise SystemExit(
            f"alembic: database unreachable at {url.host}:{url.port or 5432} ({reason}): "
            "start it or set DATABASE_URL"
        ) from None
    with connection:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

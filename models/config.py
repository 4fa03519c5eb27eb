"""Configuration, read from the environment in one place.

Every setting has a default that suits a single machine; an invalid value stops
start-up with a message naming the variable, rather than failing later at 3 a.m.

The project's ``.env`` (git-ignored; ``make up`` writes the URLs of the embedded
PostgreSQL and Redis there) is read first, as honcho and the Flask CLI read it, so
every entry point (gunicorn, dramatiq, the scheduler, alembic, the CLI, bench)
finds the same services with nothing exported. A real environment variable always
wins over ``.env``. ``SLA_ENV_FILE`` names another file; empty reads none (the tests
set it, so a developer's ``.env`` never reaches them).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .errors import ConfigError  # raised here; defined with the service's other errors

ENV_FILE = Path(__file__).resolve().parent.parent / ".env"
# A repeating escalation step without max_repeats runs at most this many more times.
DEFAULT_MAX_STEP_REPEATS = 100


def normalize_database_url(url: str) -> str:
    """Accept URLs as PaaS add-ons hand them out and pin the psycopg 3 driver."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"DATABASE_URL must look like postgresql://user@host/db, got {url!r}")
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    raise ConfigError(f"DATABASE_URL must be a postgres:// or postgresql:// URL, got {scheme}://")


_QUEUE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _role(env: dict[str, str], name: str, default: str) -> str | None:
    """A PostgreSQL role to act as; empty means "the role the URL logs in as"."""
    raw = env.get(name, default).strip()
    if raw == "":
        return None
    if not _ROLE.fullmatch(raw):
        raise ConfigError(f"{name} must be a lower-case PostgreSQL role name, got {raw!r}")
    return raw


def _int(env: dict[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


DEFAULT_RATE_LIMIT = "100/second;3000/minute"
# 0 s, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts over about 27.6 hours.
DEFAULT_RETRY_SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


def _schedule(env: dict[str, str], name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        values = tuple(int(part) for part in raw.split(","))
    except ValueError:
        raise ConfigError(
            f"{name} must be comma-separated whole seconds such as 0,5,300, got {raw!r}"
        ) from None
    if any(v < 0 for v in values):
        raise ConfigError(f"{name} must not hold negative delays, got {raw!r}")
    return values


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true/false, yes/no, on/off), got {raw!r}")


def _seconds(env: dict[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value >= minimum or value == float("inf"):
        raise ConfigError(f"{name} must be a finite number >= {minimum}, got {raw!r}")
    return value


def _rate_limit(raw: str) -> str | None:
    raw = raw.strip()
    if raw.lower() in ("", "off", "none"):
        return None
    from limits import parse_many

    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(
            f"SLA_RATE_LIMIT must look like '100/second;3000/minute' or 'off', got {raw!r}"
        ) from None
    return raw


def _choice(env: dict[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    if raw.lower() not in (c.lower() for c in choices):
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return next(c for c in choices if c.lower() == raw.lower())


LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    admin_token: str | None
    # Firing path.
    batch_size: int
    wakeup_horizon_seconds: int
    wakeup_bucket_ms: int
    wakeup_lead_ms: int
    poll_interval_ms: int
    fire_parallelism: int
    # The scheduler fires from PostgreSQL while Redis is unreachable (tasks/scheduler.py):
    # it pings Redis this often (a ping unanswered in twice this long counts as down) ...
    redis_check_ms: int
    # ... and meanwhile looks for due timers at least this often.
    direct_poll_ms: int
    lease_seconds: int
    max_attempts: int
    backoff_base_seconds: int
    backoff_max_seconds: int
    # Connections: bounded so an outage turns into a quick 503, not a hang.
    db_pool_size: int
    db_pool_timeout_seconds: int
    db_connect_timeout_seconds: int
    db_statement_timeout_ms: int
    redis_timeout_seconds: int
    max_body_bytes: int
    # API key -> tenant, remembered per web process; 0 disables.
    api_key_cache_seconds: int
    # Row-level security: the API acts as db_app_role, which sees one tenant per
    # transaction; workers act as db_maintenance_role, which sees all (docs/design.md).
    db_app_role: str | None
    db_maintenance_role: str | None
    # Per-tenant limit on the write endpoints, in Flask-Limiter's notation; None disables.
    rate_limit: str | None
    # The Dramatiq queue of wake-ups and sweeps (tasks/broker.py). The tests use their
    # own, so a running stack's worker never consumes their messages, nor they its.
    queue: str = "sla"
    # Webhook delivery (tasks/delivery.py, docs/webhooks.md).
    webhook_timeout_seconds: float = 5.0
    # Delay before each attempt: the first from the event's commit, each next one
    # from the previous failure. After the last one fails the delivery is FAILED.
    webhook_retry_schedule: tuple[int, ...] = DEFAULT_RETRY_SCHEDULE
    webhook_disable_after_seconds: int = 5 * 24 * 3600
    webhook_allow_private_networks: bool = False
    # How long a rotated-out secret keeps signing beside the new one.
    webhook_secret_grace_seconds: int = 24 * 3600
    # Per subscription, across all workers: requests in flight at once, and while
    # its last attempt failed (a dead endpoint is probed, not flooded).
    webhook_max_in_flight: int = 64
    webhook_failing_in_flight: int = 2
    # Deliveries one claim takes, and concurrent requests per worker process.
    delivery_batch_size: int = 500
    delivery_concurrency: int = 128
    # Single starts of one tenant arriving while its last is in flight share the
    # next statement, this many at most (web/start_groups.py); 1: each alone.
    start_group_max: int = 64
    # The most a repeating step repeats (SLA_MAX_STEP_REPEATS): the bound of an
    # open-ended repeat and of max_repeats. Keep it fixed while timers run: a
    # fire counts its runs in the order this bound gives (models/sla.py).
    max_step_repeats: int = DEFAULT_MAX_STEP_REPEATS
    # Retention (models/retention.py): closed timers with their step and warning
    # rows after this many days, delivered events with their deliveries after
    # that many; rows deleted per batch (one short transaction each).
    retention_days: int = 90
    outbox_retention_days: int = 14
    retention_batch_size: int = 1000
    # Logs (models/logs.py, docs/logging.md): one JSON object per line, or
    # human-readable lines (`make up`); and the root level.
    log_format: str = "json"
    log_level: str = "INFO"
    # Metrics (models/metrics.py, docs/metrics.md): prometheus-client's multiprocess
    # directory (PROMETHEUS_MULTIPROC_DIR; None: each process counts alone), the
    # bearer token /metrics asks for (None: open), how long a scrape reuses the
    # state read from the database, and the port on which a worker or scheduler
    # host without a web process serves the directory (None: none).
    metrics_dir: str | None = None
    metrics_token: str | None = None
    metrics_cache_seconds: float = 10.0
    metrics_port: int | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        settings = cls(
            database_url=normalize_database_url(
                env.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
            ),
            redis_url=env.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
            admin_token=env.get("SLA_ADMIN_TOKEN") or None,
            batch_size=_int(env, "SLA_BATCH_SIZE", 1000, minimum=1),
            wakeup_horizon_seconds=_int(env, "SLA_WAKEUP_HORIZON_SECONDS", 300, minimum=90),
            wakeup_bucket_ms=_int(env, "SLA_WAKEUP_BUCKET_MS", 50, minimum=1),
            wakeup_lead_ms=_int(env, "SLA_WAKEUP_LEAD_MS", 250, minimum=0),
            # A wake-up passes two idle polls (delay queue, then queue) before its
            # lead runs out: at 100 ms, 1,000 timers due per second missed it (P2h).
            poll_interval_ms=_int(env, "SLA_POLL_INTERVAL_MS", 25, minimum=10),
            fire_parallelism=_int(env, "SLA_FIRE_PARALLELISM", 4, minimum=1),
            redis_check_ms=_int(env, "SLA_REDIS_CHECK_MS", 250, minimum=10),
            direct_poll_ms=_int(env, "SLA_DIRECT_POLL_MS", 250, minimum=10),
            lease_seconds=_int(env, "SLA_LEASE_SECONDS", 60, minimum=1),
            max_attempts=_int(env, "SLA_MAX_ATTEMPTS", 3, minimum=1),
            backoff_base_seconds=_int(env, "SLA_BACKOFF_BASE_SECONDS", 5, minimum=0),
            backoff_max_seconds=_int(env, "SLA_BACKOFF_MAX_SECONDS", 900, minimum=0),
            db_pool_size=_int(env, "SLA_DB_POOL_SIZE", 10, minimum=1),
            db_pool_timeout_seconds=_int(env, "SLA_DB_POOL_TIMEOUT_SECONDS", 5, minimum=1),
            db_connect_timeout_seconds=_int(env, "SLA_DB_CONNECT_TIMEOUT_SECONDS", 3, minimum=1),
            db_statement_timeout_ms=_int(env, "SLA_DB_STATEMENT_TIMEOUT_MS", 15000, minimum=0),
            redis_timeout_seconds=_int(env, "SLA_REDIS_TIMEOUT_SECONDS", 2, minimum=1),
            max_body_bytes=_int(env, "SLA_MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
            api_key_cache_seconds=_int(env, "SLA_API_KEY_CACHE_SECONDS", 10, minimum=0),
            db_app_role=_role(env, "SLA_DB_APP_ROLE", "sla_app"),
            db_maintenance_role=_role(env, "SLA_DB_MAINTENANCE_ROLE", "sla_maintenance"),
            rate_limit=_rate_limit(env.get("SLA_RATE_LIMIT", DEFAULT_RATE_LIMIT)),
            queue=env.get("SLA_QUEUE") or "sla",
            webhook_timeout_seconds=_seconds(env, "SLA_WEBHOOK_TIMEOUT_SECONDS", 5.0, minimum=0.1),
            webhook_retry_schedule=_schedule(
                env, "SLA_WEBHOOK_RETRY_SCHEDULE", DEFAULT_RETRY_SCHEDULE
            ),
            webhook_disable_after_seconds=_int(
                env, "SLA_WEBHOOK_DISABLE_AFTER_SECONDS", 5 * 24 * 3600, minimum=1
            ),
            webhook_allow_private_networks=_flag(env, "SLA_WEBHOOK_ALLOW_PRIVATE_NETWORKS", False),
            webhook_secret_grace_seconds=_int(
                env, "SLA_WEBHOOK_SECRET_GRACE_SECONDS", 24 * 3600, minimum=0
            ),
            webhook_max_in_flight=_int(env, "SLA_WEBHOOK_MAX_IN_FLIGHT", 64, minimum=1),
            webhook_failing_in_flight=_int(env, "SLA_WEBHOOK_FAILING_IN_FLIGHT", 2, minimum=1),
            delivery_batch_size=_int(env, "SLA_DELIVERY_BATCH_SIZE", 500, minimum=1),
            delivery_concurrency=_int(env, "SLA_DELIVERY_CONCURRENCY", 128, minimum=1),
            start_group_max=_int(env, "SLA_START_GROUP_MAX", 64, minimum=1),
            max_step_repeats=_int(env, "SLA_MAX_STEP_REPEATS", DEFAULT_MAX_STEP_REPEATS, minimum=1),
            retention_days=_int(env, "SLA_RETENTION_DAYS", 90, minimum=1),
            outbox_retention_days=_int(env, "SLA_OUTBOX_RETENTION_DAYS", 14, minimum=1),
            retention_batch_size=_int(env, "SLA_RETENTION_BATCH_SIZE", 1000, minimum=1),
            log_format=_choice(env, "SLA_LOG_FORMAT", "json", LOG_FORMATS),
            log_level=_choice(env, "SLA_LOG_LEVEL", "INFO", LOG_LEVELS),
            metrics_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
            metrics_token=env.get("SLA_METRICS_TOKEN") or None,
            metrics_cache_seconds=_seconds(env, "SLA_METRICS_CACHE_SECONDS", 10.0, minimum=0),
            metrics_port=_int(env, "SLA_METRICS_PORT", 0, minimum=0) or None,
        )
        if not _QUEUE.fullmatch(settings.queue):
            raise ConfigError(
                f"SLA_QUEUE must be letters, digits, '_' or '-' (1-64), got {settings.queue!r}"
            )
        if not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"REDIS_URL must be a redis:// URL, got {settings.redis_url!r}")
        if settings.wakeup_lead_ms > 2000:
            raise ConfigError("SLA_WAKEUP_LEAD_MS must be <= 2000")
        if settings.backoff_max_seconds < settings.backoff_base_seconds:
            raise ConfigError("SLA_BACKOFF_MAX_SECONDS must be >= SLA_BACKOFF_BASE_SECONDS")
        return settings


def env_file() -> Path | None:
    """The dotenv file the settings read: ``SLA_ENV_FILE``, else the project's ``.env``."""
    raw = os.environ.get("SLA_ENV_FILE")
    if raw is None:
        return ENV_FILE
    return Path(raw) if raw.strip() else None


def load_env_file() -> None:
    """Add the dotenv file's variables to the environment; never override one
    that is set (a real environment variable wins)."""
    path = env_file()
    if path is not None and path.is_file():
        from dotenv import load_dotenv

        load_dotenv(path, override=False)


@cache
def get_settings() -> Settings:
    load_env_file()
    return Settings.from_env()

"""pgqueuer as a peer in ``bench/peers.py``: its worker factory and its enqueue.

A worker is one process running pgqueuer's supervisor, as ``pgq run`` does
(``pgqueuer.run``, on uvloop like the CLI)::

    python -m bench.peers_pgqueuer --batch-size 100 --max-concurrent-tasks 200

(``pgq run`` itself fails at start with the typer installed here: its
``--log-level`` option arrives as a string where it expects an enum.)

``create`` gives the queue manager a dedicated asyncpg connection (dequeue
and LISTEN, as pgqueuer's performance guide advises) and the job body an
asyncpg pool of ``PEER_POOL_SIZE`` connections (a shared resource, created
once per process; released without asyncpg's reset query, which the job
does not need; ``PEER_POOL_RESET=default`` keeps it, as a plain pool would).
The entrypoint ``peer_fire`` runs ``peers_job.JOB`` with the job's payload.
``DATABASE_URL`` names the database.

``enqueue`` puts every job in the queue due at one instant, in one statement
(pgqueuer's batch enqueue with ``execute_after``, its deferred execution).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import pgqueuer
import uvloop
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

from .peers_job import JOB, decode, encode, job_args

ENTRYPOINT = "peer_fire"


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The job sets no session state, so a released connection needs no reset:
    asyncpg's default reset is a round trip per job (14 % of a worker's samples)."""


@asynccontextmanager
async def create() -> AsyncIterator[PgQueuer]:
    dsn = os.environ["DATABASE_URL"]
    keep = os.environ.get("PEER_POOL_RESET") != "default"
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=int(os.environ["PEER_POOL_SIZE"]),
        **({"reset": _keep_session} if keep else {}),
    )
    conn = await asyncpg.connect(dsn)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint(ENTRYPOINT)
    async def peer_fire(job: Job) -> None:
        async with pool.acquire() as conn:
            await conn.execute(JOB, *decode(job.payload))

    print("peer worker ready", flush=True)  # what bench/peers.py waits for
    try:
        yield pgq
    finally:
        await pool.close()
        await conn.close()


async def install(dsn: str) -> None:
    """pgqueuer's schema (durable, its default) and its recommended table settings."""
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        if not await queries.schema_is_installed():
            await queries.install()
        await queries.optimize_autovacuum()
    finally:
        await conn.close()


async def enqueue(dsn: str, n: int, due: datetime) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        after = due - datetime.now(UTC)
        await Queries(AsyncpgDriver(conn)).enqueue(
            [ENTRYPOINT] * n,
            [encode(job_args(i)) for i in range(n)],
            [0] * n,
            [after] * n,
        )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers_pgqueuer")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--max-concurrent-tasks", type=int, default=None)
    parser.add_argument("--dequeue-timeout", type=float, default=30.0)
    args = parser.parse_args()
    uvloop.run(
        pgqueuer.run(
            create,
            batch_size=args.batch_size,
            max_concurrent_tasks=args.max_concurrent_tasks,
            dequeue_timeout=timedelta(seconds=args.dequeue_timeout),
        )
    )


if __name__ == "__main__":
    main()

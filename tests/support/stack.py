"""A worker and a scheduler as the Procfile runs them, for acceptance tests.

Both start in their own process group, log to ``log_dir`` and are stopped on
exit, the scheduler first, so no stray process fires a later test's timers.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from devtools.processes import Service

BIN = Path(sys.executable).parent
WORKER_READY = "is ready for action"
SCHEDULER_READY = "tasks.actors:sweep@"  # the sweep's cron, once periodiq has read it


@contextmanager
def worker_and_scheduler(
    env: Mapping[str, str], log_dir: Path, *, threads: int = 4
) -> Iterator[tuple[Service, Service]]:
    """One worker process (``threads`` threads) and ``python -m tasks.scheduler``."""
    worker = Service(
        [str(BIN / "dramatiq"), "tasks", "--processes", "1", "--threads", str(threads)],
        dict(env),
        log_dir / "worker.log",
        ready=WORKER_READY,
    )
    try:
        scheduler = Service(
            [str(BIN / "python"), "-m", "tasks.scheduler"],
            dict(env),
            log_dir / "scheduler.log",
            ready=SCHEDULER_READY,
        )
    except BaseException:
        worker.stop()
        raise
    try:
        yield worker, scheduler
    finally:
        for service in (scheduler, worker):
            service.stop()

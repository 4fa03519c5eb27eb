"""The workers' and the scheduler's side of the metrics (models/metrics.py).

- ``WorkerMetrics``: Dramatiq's own Prometheus middleware (messages processed,
  errors, retries, rejections, durations, in progress, by queue and actor),
  writing into the service's multiprocess directory, so the web's ``/metrics`` serves them
  with everything else. Dramatiq's middleware also forks an HTTP server on
  port 9191 for every ``dramatiq`` command; here that server is started only
  when ``SLA_METRICS_PORT`` asks for it, on that port: a host that runs workers
  but no web process still gets scraped, and one that runs both never binds a
  second port or serves the same files twice.
- ``serve_directory``: that server (the multiprocess directory, nothing read
  from the database), also started by the scheduler when ``SLA_METRICS_PORT``
  is set.

Without a multiprocess directory the middleware is left out: its counts would
stay in each worker process, where nothing serves them.
"""

from __future__ import annotations

import logging
import threading

import dramatiq.middleware.prometheus as dramatiq_prometheus

from models import metrics
from models.config import get_settings

log = logging.getLogger(__name__)


def _registry():
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, metrics.MULTIPROCESS_DIR)
    return registry


def start_server(port: int) -> threading.Thread:
    """Serve the multiprocess directory on ``port`` from a daemon thread."""
    from prometheus_client import start_http_server

    _, thread = start_http_server(port, registry=_registry())
    log.info("serving metrics on port %d", port)
    return thread


def serve_directory() -> int:
    """A Dramatiq fork: serve the directory on ``SLA_METRICS_PORT`` until stopped."""
    start_server(get_settings().metrics_port or 0).join()
    return 0


class WorkerMetrics(dramatiq_prometheus.Prometheus):
    """Dramatiq's Prometheus middleware, serving only where SLA_METRICS_PORT asks."""

    @property
    def forks(self):
        return [serve_directory] if get_settings().metrics_port else []


def worker_middleware() -> list[WorkerMetrics]:
    """What tasks/broker.py adds: the middleware, if processes share a directory."""
    if not metrics.MULTIPROCESS:
        return []
    # Whichever module was imported first: the middleware writes (and at process
    # boot points PROMETHEUS_MULTIPROC_DIR) where every other metric goes.
    dramatiq_prometheus.DB_PATH = metrics.MULTIPROCESS_DIR
    return [WorkerMetrics()]

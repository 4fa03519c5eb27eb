"""Delivery wake-ups after a route's commit, sent by a thread of the web process.

A route that commits outbox events wakes webhook delivery after the commit
(``tasks.delivery.wake_delivery``: one Redis SET, a ``deliver`` message when
the flag was not set). On the single-start path that round trip cost about as
much CPU as the rest of the route's Python, and the request waited for it.

``wake_delivery()`` here only signals this process's waker thread and returns.
The thread clears the signal, then calls ``tasks.delivery.wake_delivery``, so
every commit that signalled is followed by a call that began after it: the
guarantee is the one the flag already gives (an event committed after a
delivery loop's delete of the flag sends again). Commits that signal while a
call is in flight share the next call, and calls are at least
``MIN_INTERVAL_S`` apart, so a stream of starts costs each process at most
a few hundred Redis commands a second, and an event waits at most that
interval longer for its delivery loop. Nothing here raises; a wake lost with
its process (killed between commit and call) leaves the event to the minute
sweep, as a lost Redis command always did.

The call runs under the correlation id of the request that signalled first
since the last call, so a ``deliver`` message it sends carries one, as it did
when the first request sent it (tasks/logs.py).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time

from models import logs

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.005


class Waker:
    """One per process: the thread that turns signals into delivery wakes."""

    def __init__(self, min_interval_s: float = MIN_INTERVAL_S) -> None:
        self.min_interval_s = min_interval_s
        self._signal = threading.Event()
        self._idle = threading.Event()  # the thread waits for a signal
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._stopping = False
        self._correlation: str | None = None
        atexit.register(self.flush)

    def signal(self) -> None:
        if self._pid != os.getpid():
            self._start()
        # Already set: the thread has not cleared it yet, so its next call
        # begins after this commit too (and a plain read takes no lock).
        if not self._signal.is_set():
            self._correlation = logs.correlation_id()
            self._signal.set()

    def _start(self) -> None:
        # Threads do not survive a fork: each worker process starts its own.
        with self._lock:
            if self._pid == os.getpid():
                return
            self._signal = threading.Event()
            self._idle = threading.Event()
            self._thread = threading.Thread(
                target=self._run, name="sla-delivery-waker", daemon=True
            )
            self._pid = os.getpid()
            self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            self._idle.set()
            self._signal.wait()
            self._idle.clear()
            if self._stopping:
                return
            self._signal.clear()
            self._wake()
            time.sleep(self.min_interval_s)

    def _wake(self) -> None:
        # Looked up at each call: tests replace tasks.delivery.wake_delivery.
        from tasks import delivery

        token = logs.bind(correlation_id=self._correlation)
        try:
            delivery.wake_delivery()  # never raises, by contract
        except Exception:
            log.exception("waking delivery failed; the sweep delivers instead")
        finally:
            logs.unbind(token)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Until every signal so far has been turned into a call that returned
        (tests: a wake from an earlier request must not land in a later one's)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._pid != os.getpid() or (self._idle.is_set() and not self._signal.is_set()):
                return True
            time.sleep(0.001)
        return False

    def flush(self) -> None:
        """At exit: a signal not yet turned into a call is sent now."""
        self._stopping = True
        if self._pid == os.getpid() and self._signal.is_set():
            self._signal.clear()
            self._wake()
        self._signal.set()  # ends the thread's wait


_waker = Waker()


def wake_delivery() -> None:
    """Ask for a delivery loop after a commit that wrote events; returns at once."""
    _waker.signal()

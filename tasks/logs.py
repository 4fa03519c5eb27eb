"""The worker's side of the logs (models/logs.py): JSON lines from each worker
process, and the correlation id carried through Dramatiq messages.

``LogContext`` is a broker middleware:

- ``after_process_boot`` (emitted by ``dramatiq``'s CLI only, in each worker
  process once its logging is set up) reformats that process's handler, the
  pipe to the supervisor, into this service's lines. The supervisor's own few
  lines (boot, a child's exit) stay in Dramatiq's plain format.
- ``before_enqueue`` stores the sender's bound ``correlation_id`` (a request's,
  a message's) in the message's options, unless it has one.
- ``before_process_message`` binds the message's ``correlation_id``,
  ``message_id`` and ``actor`` for its run; ``after_process_message`` (and
  ``after_skip_message``) unbinds them.

A wake-up is shared by every timer due in its bucket, so its correlation id is
only the one of whoever asked for it first; the firing loop's lines name
each timer's own (tasks/firing.py).
"""

from __future__ import annotations

import threading

from dramatiq.middleware import Middleware

from models import logs

CORRELATION_OPTION = "correlation_id"


class LogContext(Middleware):
    def __init__(self) -> None:
        self._local = threading.local()

    def after_process_boot(self, broker) -> None:
        logs.configure("worker")

    def before_enqueue(self, broker, message, delay) -> None:
        correlation = logs.correlation_id()
        if correlation is not None and CORRELATION_OPTION not in message.options:
            message.options[CORRELATION_OPTION] = correlation

    def before_process_message(self, broker, message) -> None:
        self._local.token = logs.bind(
            correlation_id=message.options.get(CORRELATION_OPTION),
            message_id=message.message_id,
            actor=message.actor_name,
        )

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        token = getattr(self._local, "token", None)
        if token is not None:
            self._local.token = None
            logs.unbind(token)

    def after_skip_message(self, broker, message) -> None:
        self.after_process_message(broker, message)

"""A real local webhook receiver: an HTTP/1.1 server on 127.0.0.1 (a free port)
whose answers the test scripts, request by request.

``Receiver()`` starts at once (threaded, keep-alive). Each request takes the
next ``Reply`` scripted for its path (``script(..., path="/a")``), else the
next one scripted for any path (``script(...)``), else ``default``. A reply
says the status, headers (``Retry-After``, ``Location``...), body, a delay
before answering, or ``hang`` (never answer; the connection is dropped when
the receiver closes). Every request is recorded (method, path, headers with
lower-case names, body, arrival time) in ``requests``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    hang: bool = False


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() at arrival
    status: int = 0  # what it was answered (0: not answered)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")


class Receiver:
    def __init__(self, default: Reply | None = None) -> None:
        self.default = default or Reply()
        self.requests: list[Request] = []
        self._lock = threading.Condition()
        self._any: deque[Reply] = deque()
        self._by_path: dict[str, deque[Reply]] = {}
        self._closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    time.time(),
                )
                reply = receiver._next(request)
                if reply.hang:
                    receiver._closing.wait()
                    self.close_connection = True
                    return
                if reply.delay:
                    receiver._closing.wait(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
                request.status = reply.status

            do_GET = do_PUT = do_DELETE = do_POST

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _next(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            self._lock.notify_all()
            path = request.path.split("?")[0]
            if self._by_path.get(path):
                return self._by_path[path].popleft()
            if self._any:
                return self._any.popleft()
            return self.default

    def script(self, *replies: Reply, path: str | None = None) -> None:
        """Answer the next requests (to ``path``, or to any) with ``replies``, in order."""
        with self._lock:
            (self._by_path.setdefault(path, deque()) if path else self._any).extend(replies)

    def received(self, path: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path.split("?")[0] == path]

    def wait_for(self, count: int, timeout: float = 10, path: str | None = None) -> list[Request]:
        """At least ``count`` requests (to ``path``), or AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [r for r in self.requests if path is None or r.path.split("?")[0] == path]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(found)} of {count} requests to {path or 'the receiver'} "
                        f"within {timeout} s"
                    )
                self._lock.wait(left)

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

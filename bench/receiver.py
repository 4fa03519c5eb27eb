"""A fast local webhook receiver for the benchmarks and the chaos run.

One process, one asyncio event loop, HTTP/1.1 with keep-alive on a raw
``asyncio.Protocol`` (no framework: at a few thousand requests a second the
receiver must not be what the benchmark measures). Each path is a route with
its own behaviour:

- ``fast``: 200 at once;
- ``dead``: reads the request and never answers; the connection stays open
  until the sender gives up (every attempt a timeout);
- ``flaky``: of each request, ``fail`` (a fraction) get 500, ``hang`` (a
  further fraction) get no answer for ``hang_s`` seconds, after which the
  connection is closed unanswered, and the rest get 200.

Per route it records, for each ``webhook-id``: the time (``time.time()``, this
machine's clock) of its first successful receipt (the first 2xx this receiver
answered), how many 2xx it answered for it and how many requests it got. A
``webhook-id`` answered 2xx twice is a duplicate. With a route's secret,
every ``verify_every``-th request's signature is checked with
``standardwebhooks``' own verifier.

Control, on the same port (paths under ``/__``): ``GET /__stats`` (counts),
``GET /__receipts`` (every id's figures), ``POST /__reset``, ``POST /__route``
(a JSON body ``{"path", "mode", "fail", "hang", "hang_s", "secret"}``: add or
change a route). ``ReceiverProcess`` runs it as a process and speaks to it::

    python -m bench.receiver --port 8900 --route /b=fast --route /a=dead
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

MODES = ("fast", "dead", "flaky")
READY = "receiver listening on"

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_ERROR = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_MAX_HEAD = 64 * 1024


@dataclass
class Route:
    mode: str = "fast"
    fail: float = 0.0  # flaky: fraction answered 500
    hang: float = 0.0  # flaky: further fraction left unanswered for hang_s
    hang_s: float = 30.0
    secret: str | None = None
    # webhook-id -> [first 2xx at (epoch s), 2xx answered, requests]
    ids: dict[str, list] = field(default_factory=dict)
    requests: int = 0
    answered_2xx: int = 0
    answered_500: int = 0
    hung: int = 0
    verified: int = 0
    bad_signatures: int = 0
    without_id: int = 0

    def stats(self) -> dict:
        duplicates = sum(v[1] - 1 for v in self.ids.values() if v[1] > 1)
        return {
            "mode": self.mode,
            "requests": self.requests,
            "answered_2xx": self.answered_2xx,
            "answered_500": self.answered_500,
            "hung": self.hung,
            "ids": len(self.ids),
            "ids_received": sum(1 for v in self.ids.values() if v[1]),
            "duplicates": duplicates,  # 2xx answers beyond the first per id
            "ids_duplicated": sum(1 for v in self.ids.values() if v[1] > 1),
            "verified": self.verified,
            "bad_signatures": self.bad_signatures,
            "without_id": self.without_id,
        }


class Receiver:
    """The routes and their records; the protocol below feeds it requests."""

    def __init__(self, routes: dict[str, Route], verify_every: int = 0, seed: int = 1):
        self.routes = routes
        self.verify_every = verify_every
        self.rng = random.Random(seed)
        self._verifiers: dict[str, object] = {}

    def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> bytes | float | None:
        """The response bytes; or, to leave the request unanswered, how many seconds
        before the connection is closed (a flaky hang), None for never (dead)."""
        if path.startswith("/__"):
            return self.control(method, path, body)
        route = self.routes.get(path)
        if route is None:
            return _NOT_FOUND
        now = time.time()
        route.requests += 1
        msg_id = headers.get("webhook-id")
        record = None
        if msg_id is None:
            route.without_id += 1
        else:
            record = route.ids.get(msg_id)
            if record is None:
                record = route.ids[msg_id] = [None, 0, 0]
            record[2] += 1
        if route.secret and self.verify_every and route.requests % self.verify_every == 0:
            self._verify(route, headers, body)
        if route.mode == "dead":
            route.hung += 1
            return None
        if route.mode == "flaky":
            draw = self.rng.random()
            if draw < route.hang:
                route.hung += 1
                return route.hang_s
            if draw < route.hang + route.fail:
                route.answered_500 += 1
                return _ERROR
        route.answered_2xx += 1
        if record is not None:
            if record[0] is None:
                record[0] = now
            record[1] += 1
        return _OK

    def _verify(self, route: Route, headers: dict[str, str], body: bytes) -> None:
        from standardwebhooks.webhooks import Webhook

        verifier = self._verifiers.get(route.secret)
        if verifier is None:
            verifier = self._verifiers[route.secret] = Webhook(route.secret)
        try:
            verifier.verify(body, headers)
            route.verified += 1
        except Exception:
            route.bad_signatures += 1

    def control(self, method: str, path: str, body: bytes) -> bytes:
        if path == "/__stats":
            return _json({p: r.stats() for p, r in self.routes.items()})
        if path == "/__receipts":
            return _json({p: r.ids for p, r in self.routes.items()})
        if path == "/__reset" and method == "POST":
            for route in self.routes.values():
                fresh = Route(route.mode, route.fail, route.hang, route.hang_s, route.secret)
                route.__dict__.update(fresh.__dict__)
            return _json({"reset": True})
        if path == "/__route" and method == "POST":
            spec = orjson.loads(body)
            path_ = spec.pop("path")
            route = self.routes.get(path_) or Route()
            for key, value in spec.items():
                if not hasattr(route, key) or key == "ids":
                    return _BAD
                setattr(route, key, value)
            if route.mode not in MODES:
                return _BAD
            self.routes[path_] = route
            return _json({"path": path_, "mode": route.mode})
        return _NOT_FOUND


def _json(value) -> bytes:
    data = orjson.dumps(value)
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(data)).encode()
        + b"\r\n\r\n"
        + data
    )


class _Connection(asyncio.Protocol):
    """HTTP/1.1 requests in order on one keep-alive connection."""

    def __init__(self, receiver: Receiver):
        self.receiver = receiver
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.hanging = False  # a request left unanswered: nothing more is answered

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.hanging:
            return
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    self._close(_BAD)
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            try:
                method, target, _ = head[0].split(" ", 2)
                headers = {}
                for line in head[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
            except ValueError:
                self._close(_BAD)
                return
            if len(self.buffer) < end + 4 + length:
                return  # the rest of the body is on its way
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            response = self.receiver.handle(method, target.split("?", 1)[0], headers, body)
            if not isinstance(response, bytes):
                self._hang(response)
                return
            self.transport.write(response)
            if headers.get("connection", "").lower() == "close":
                self._close(None)
                return

    def _hang(self, seconds: float | None) -> None:
        """Answer nothing more on this connection; close it after ``seconds``
        (a flaky hang), or leave that to the sender (dead)."""
        self.hanging = True
        self.buffer.clear()
        if seconds is not None:
            asyncio.get_running_loop().call_later(seconds, self._close, None)

    def _close(self, response: bytes | None) -> None:
        if self.transport is not None:
            if response:
                self.transport.write(response)
            self.transport.close()


async def serve(receiver: Receiver, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(receiver), host, port, backlog=1024, reuse_address=True
    )
    print(f"{READY} {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def _route_arg(raw: str) -> tuple[str, Route]:
    """``/path=mode[:fail,hang,hang_s]``, e.g. ``/c=flaky:0.2,0.05,3``."""
    path, _, spec = raw.partition("=")
    mode, _, numbers = spec.partition(":")
    route = Route(mode=mode or "fast")
    if numbers:
        values = [float(x) for x in numbers.split(",")]
        route.fail, route.hang, route.hang_s = (values + [0.0, 0.0, 30.0][len(values) :])[:3]
    if route.mode not in MODES:
        raise argparse.ArgumentTypeError(f"mode must be one of {MODES}")
    return path, route


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--route", type=_route_arg, action="append", default=[])
    parser.add_argument("--secret", action="append", default=[], help="/path=whsec_...")
    parser.add_argument("--verify-every", type=int, default=0, help="0: never")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    routes = dict(args.route)
    for raw in args.secret:
        path, _, secret = raw.partition("=")
        routes.setdefault(path, Route()).secret = secret
    asyncio.run(serve(Receiver(routes, args.verify_every, args.seed), args.host, args.port))


# --------------------------------------------------------------------------- driving it


class ReceiverProcess:
    """``python -m bench.receiver`` as a process (its own core, not the driver's GIL)."""

    def __init__(
        self,
        log: Path,
        routes: Iterable[str],
        *,
        secrets: dict[str, str] | None = None,
        verify_every: int = 0,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ):
        import os
        import sys

        from devtools.processes import Service

        self.port = port or free_port()
        args = [sys.executable, "-m", "bench.receiver", "--port", str(self.port)]
        for route in routes:
            args += ["--route", route]
        for path, secret in (secrets or {}).items():
            args += ["--secret", f"{path}={secret}"]
        args += ["--verify-every", str(verify_every)]
        self.service = Service(args, env or dict(os.environ), log, ready=READY)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        import urllib.request

        request = urllib.request.Request(
            self.url(path),
            method=method,
            data=None if body is None else orjson.dumps(body),
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return orjson.loads(response.read())

    def stats(self) -> dict:
        return self._call("GET", "/__stats")

    def receipts(self) -> dict[str, dict[str, list]]:
        """Per route: webhook-id -> [first 2xx at, 2xx answered, requests]."""
        return self._call("GET", "/__receipts")

    def reset(self) -> None:
        self._call("POST", "/__reset", {})

    def route(self, path: str, **spec) -> None:
        self._call("POST", "/__route", {"path": path, **spec})

    def received(self, path: str) -> int:
        return self.stats().get(path, {}).get("ids_received", 0)

    def stop(self) -> None:
        self.service.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()

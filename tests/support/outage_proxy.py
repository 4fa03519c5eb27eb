"""A TCP proxy that can be switched off, to simulate a PostgreSQL or Redis outage
without touching the (shared) servers.

``OutageProxy(host, port)`` forwards ``127.0.0.1:<proxy.port>`` to ``host:port``.
``down("refuse")`` closes every live connection and refuses new ones (the
listening socket is closed: a connect gets ECONNREFUSED), like a stopped server;
``down("blackhole")`` closes every live connection and accepts new ones but never
answers, like a partitioned network, so only the client's own timeouts end a
connect. ``up()`` forwards again; blackholed connections are then closed.

Each forwarded connection has one thread per direction; all of them are daemons
and ``close()`` ends them.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from contextlib import contextmanager, suppress
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

Mode = Literal["up", "refuse", "blackhole"]

_CHUNK = 65536


def _abort(sock: socket.socket) -> None:
    """Close with RST (no lingering FIN handshake), waking any thread blocked in recv."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self._lock = threading.Lock()
        self._open = 2  # pump threads still running; the last one closes the sockets

    def abort(self) -> None:
        _abort(self.client)
        _abort(self.upstream)

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(_CHUNK):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # One side ended: end the other too, as a real TCP connection would.
            _abort(dst)
            _abort(src)
            with self._lock:
                self._open -= 1
                last = self._open == 0
            if last:
                self.client.close()
                self.upstream.close()


class OutageProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self._lock = threading.Lock()
        self._mode: Mode = "up"
        self._pairs: set[_Pair] = set()
        self._held: list[socket.socket] = []  # accepted while blackholed, never answered
        self._listener: socket.socket | None = self._bind(0)
        self.port: int = self._listener.getsockname()[1]
        self._wanted = 0  # generation of the last mode change ...
        self._applied = 0  # ... and the last one the accept thread has acted on
        self._changed = threading.Condition(self._lock)
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="outage-proxy", daemon=True)
        self._thread.start()

    # -- URLs --------------------------------------------------------------

    def url_for(self, url: str) -> str:
        """``url`` (postgresql://, redis://) with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}{self.host}:{self.port}"))

    @classmethod
    def for_url(cls, url: str) -> OutageProxy:
        parts = urlsplit(url)
        default = 6379 if parts.scheme.startswith("redis") else 5432
        return cls(parts.hostname or "127.0.0.1", parts.port or default)

    # -- control -------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def live_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def down(self, mode: Literal["refuse", "blackhole"] = "refuse") -> None:
        """Cut: live connections are closed; new ones are refused or blackholed.
        Returns once the new mode is in force."""
        self._set(mode)

    def up(self) -> None:
        self._set("up")

    @contextmanager
    def outage(self, mode: Literal["refuse", "blackhole"] = "refuse"):
        self.down(mode)
        try:
            yield self
        finally:
            self.up()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._set("refuse")
        self._thread.join(5)

    def __enter__(self) -> OutageProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _set(self, mode: Mode) -> None:
        with self._changed:
            self._mode = mode
            self._wanted += 1
            wanted = self._wanted
            if mode != "up":
                for pair in self._pairs:
                    pair.abort()
                self._pairs.clear()
            else:
                for sock in self._held:
                    _abort(sock)
                    sock.close()
                self._held.clear()
            # The accept thread opens or closes the listening socket.
            if not self._changed.wait_for(lambda: self._applied >= wanted, timeout=5):
                raise RuntimeError("the outage proxy's accept thread is stuck")

    # -- accept thread -------------------------------------------------------

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.listen(128)
        sock.settimeout(0.02)
        return sock

    def _accept_loop(self) -> None:
        while True:
            with self._changed:
                closed, mode = self._closed, self._mode
                if mode == "refuse" and self._listener is not None:
                    self._listener.close()  # pending connects are reset, new ones refused
                    self._listener = None
                elif mode != "refuse" and self._listener is None:
                    self._listener = self._bind(self.port)
                self._applied = self._wanted
                self._changed.notify_all()
                listener = self._listener
            if closed:
                return
            if listener is None:
                time.sleep(0.01)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            self._handle(client)

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(None)
        with self._lock:
            if self._mode == "blackhole":
                self._held.append(client)
                return
            if self._mode != "up":
                _abort(client)
                client.close()
                return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _abort(client)
            client.close()
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, upstream)
        with self._lock:
            if self._mode != "up":  # cut while connecting
                pair.abort()
                client.close()
                upstream.close()
                return
            self._pairs.add(pair)
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(
                target=self._run_pump, args=(pair, src, dst), name="outage-proxy-pump", daemon=True
            ).start()

    def _run_pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        pair.pump(src, dst)
        with self._lock:
            self._pairs.discard(pair)

"""Sending one webhook: the destination checked, the connection pinned to the
checked address, the signed envelope POSTed, the answer read (tasks/delivery.py
claims and records; this module only sends).

- The URL is vetted by models/destinations.py at each delivery (the answer is
  kept ``DESTINATION_TTL_S`` per URL, to keep DNS off the hot path), and the
  connection goes to the address that check saw, never to a second lookup, so
  a DNS answer that changes in between (rebinding) cannot redirect it. The
  URL's host goes in ``Host`` and, for https, in SNI and the certificate check.
- The body is the envelope's text as the claim returned it (built in SQL,
  models/sql/deliveries.sql), signed as it is; the request's lines that depend
  on the URL alone are made once per URL.
- HTTP/1.1 with keep-alive, written straight on the socket: the request is
  one ``sendall`` and the answer's status line and headers one parse. At a
  few thousand requests a second this costs a fraction of urllib3's CPU
  (measured on this machine: ~250 µs a request for urllib3, ~150 µs for
  http.client). Nothing is followed: a 3xx is the attempt's answer.
- ``SLA_WEBHOOK_TIMEOUT_SECONDS`` bounds the whole exchange (connect, send,
  status and headers, a small body): every socket wait gets what is left.
- A connection is reused only if the answer said it may be (HTTP/1.1, no
  ``Connection: close``, a ``Content-Length`` body read to its end), and only
  if it is quiet when taken from the pool. A reused connection that the
  receiver had closed meanwhile (no answer at all) is retried once on a new one.
- The request carries ``X-Correlation-ID``, the event's correlation id (its
  timer's, so the one its start request gave or was echoed), when it is
  printable ASCII without spaces; the envelope's payload carries it anyway.
"""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict
from functools import lru_cache
from urllib.parse import quote, urlsplit
from uuid import UUID

from models import signatures
from models.config import Settings
from models.deliveries import Claimed, Outcome, retry_after_seconds
from models.destinations import Destination, UnsafeDestination, check

# How long a destination check (DNS) is trusted.
DESTINATION_TTL_S = 5.0
MAX_DESTINATIONS = 2048
USER_AGENT = "sla-timers-webhooks/1"
# Read this much of a failed answer's body into the attempt's error.
ERROR_BODY_BYTES = 200
# A body up to this size is read to keep the connection; a larger one closes it.
DRAIN_MAX_BYTES = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024
IDLE_PER_DESTINATION = 64

_TLS = ssl.create_default_context()


class _Failed(Exception):
    """The exchange failed; ``answered`` says whether any answer byte came back."""

    def __init__(self, message: str, *, answered: bool, timeout: bool = False) -> None:
        super().__init__(message)
        self.answered = answered
        self.timeout = timeout


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def quiet(self) -> bool:
        """Nothing to read on an idle connection: the receiver has not closed it."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _recv(conn: _Conn, deadline: float) -> bytes:
    conn.sock.settimeout(_left(deadline))
    return conn.sock.recv(65536)


def _exchange(
    conn: _Conn, request: bytes, deadline: float
) -> tuple[int, dict[str, str], bytes, bool]:
    """Send ``request`` and read the answer: (status, headers, body start, reusable)."""
    conn.sock.settimeout(_left(deadline))
    conn.sock.sendall(request)
    answered = False
    while True:  # skip 1xx answers
        while (end := conn.buf.find(b"\r\n\r\n")) < 0:
            if len(conn.buf) > MAX_HEAD_BYTES:
                raise _Failed("the answer's headers are too large", answered=True)
            data = _recv(conn, deadline)
            if not data:
                raise _Failed("the receiver closed the connection", answered=answered)
            answered = True
            conn.buf += data
        head, conn.buf = conn.buf[:end], conn.buf[end + 4 :]
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise _Failed(f"not an HTTP answer: {lines[0][:80]!r}", answered=True)
        status = int(parts[1])
        if status >= 200 or status < 100:
            break
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    reusable = parts[0] == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    length = headers.get("content-length")
    if status in (204, 304):
        length = "0"
    if length is None or not length.isdigit() or "transfer-encoding" in headers:
        # Chunked or until close: read nothing more, do not reuse.
        return status, headers, conn.buf[:ERROR_BODY_BYTES], False
    size = int(length)
    if size > DRAIN_MAX_BYTES:
        return status, headers, conn.buf[:ERROR_BODY_BYTES], False
    while len(conn.buf) < size:
        data = _recv(conn, deadline)
        if not data:
            return status, headers, conn.buf[:ERROR_BODY_BYTES], False
        conn.buf += data
    body, conn.buf = conn.buf[:size], conn.buf[size:]
    return status, headers, body, reusable and not conn.buf


# Everything printable in ASCII but the space stays as written; the rest is %-encoded.
_AS_IS = "".join(chr(c) for c in range(33, 127))


def _safe(text: str) -> bool:
    return text.isascii() and text.isprintable() and " " not in text


class Sender:
    """POSTs one claimed delivery (see the module). Thread-safe; never raises
    for the receiver's behaviour: every failure is an ``Outcome`` with an error."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._destinations: dict[str, tuple[float, Destination | UnsafeDestination]] = {}
        self._idle: OrderedDict[tuple, list[_Conn]] = OrderedDict()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, OrderedDict()
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def destination(self, url: str) -> Destination:
        """``check(url)``, remembered for ``DESTINATION_TTL_S``; UnsafeDestination if refused."""
        now = time.monotonic()
        with self._lock:
            cached = self._destinations.get(url)
        if cached is None or cached[0] < now:
            try:
                found: Destination | UnsafeDestination = check(
                    url, allow_private=self.settings.webhook_allow_private_networks
                )
            except UnsafeDestination as exc:
                found = exc
            with self._lock:
                if len(self._destinations) >= MAX_DESTINATIONS:
                    self._destinations.clear()
                self._destinations[url] = (now + DESTINATION_TTL_S, found)
        else:
            found = cached[1]
        if isinstance(found, UnsafeDestination):
            raise found
        return found

    # -- connections

    def _take(self, key: tuple) -> _Conn | None:
        with self._lock:
            conns = self._idle.get(key)
            while conns:
                conn = conns.pop()
                if conn.quiet():
                    return conn
                conn.close()
        return None

    def _give(self, key: tuple, conn: _Conn) -> None:
        with self._lock:
            conns = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            if len(conns) < IDLE_PER_DESTINATION:
                conns.append(conn)
                conn = None
            while len(self._idle) > MAX_DESTINATIONS:
                _, old = self._idle.popitem(last=False)
                for c in old:
                    c.close()
        if conn is not None:
            conn.close()

    def _connect(self, dest: Destination, address: str, deadline: float) -> _Conn:
        sock = socket.create_connection((address, dest.port), timeout=_left(deadline))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if dest.scheme == "https":
                sock.settimeout(_left(deadline))
                sock = _TLS.wrap_socket(sock, server_hostname=dest.host)
        except BaseException:
            sock.close()
            raise
        return _Conn(sock)

    # -- one delivery

    def send(self, row: Claimed, token: UUID) -> Outcome:
        started = time.monotonic()
        deadline = started + self.settings.webhook_timeout_seconds
        try:
            dest = self.destination(row.url)
        except UnsafeDestination as exc:
            return _outcome(row, token, started, None, f"unsafe destination, not sent: {exc}")
        request = self._request(row, dest)
        if request is None:
            error = "unsafe destination, not sent: the URL has unsafe characters"
            return _outcome(row, token, started, None, error)
        address = dest.addresses[0]  # every one was checked: connect to it, not to a new lookup
        key = (dest.scheme, address, dest.port, dest.host)
        try:
            conn = self._take(key)
            reused = conn is not None
            for attempt in (1, 2):
                if conn is None:
                    conn = self._connect(dest, address, deadline)
                try:
                    status, headers, body, reusable = _exchange(conn, request, deadline)
                    break
                except (_Failed, ConnectionError) as exc:
                    conn.close()
                    conn = None
                    stale = not getattr(exc, "answered", False)
                    if not (reused and stale and attempt == 1):
                        raise
                    reused = False  # the receiver closed an idle connection: once more, afresh
                except BaseException:
                    conn.close()
                    raise
        except TimeoutError:
            limit = self.settings.webhook_timeout_seconds
            return _outcome(row, token, started, None, f"timed out after {limit:g} s")
        except _Failed as exc:
            return _outcome(row, token, started, None, f"connection failed: {exc}")
        except ssl.SSLError as exc:
            return _outcome(row, token, started, None, f"TLS failed: {exc}")
        except OSError as exc:
            return _outcome(row, token, started, None, f"connection failed: {exc.strerror or exc}")
        if reusable:
            self._give(key, conn)
        else:
            conn.close()
        if 200 <= status < 300:
            return _outcome(row, token, started, status, None)
        if 300 <= status < 400:
            where = headers.get("location", "")
            error = f"HTTP {status}: redirects are not followed ({where})"
            return _outcome(row, token, started, status, error)
        text = body[:ERROR_BODY_BYTES].decode("utf-8", "replace").strip()
        error = f"HTTP {status}" + (f": {text}" if text else "")
        retry_after = retry_after_seconds(headers.get("retry-after"))
        return _outcome(row, token, started, status, error, retry_after)

    def _request(self, row: Claimed, dest: Destination) -> bytes | None:
        """The request's bytes: the envelope signed with every current secret."""
        head = _head(row.url, dest.host)
        if head is None:
            return None
        secrets = (row.secret, row.previous_secret) if row.previous_secret else (row.secret,)
        at = int(time.time())
        data = row.body.encode()
        lines = [
            head,
            f"Content-Length: {len(data)}\r\n"
            f"webhook-id: {row.webhook_id}\r\n"
            f"webhook-timestamp: {at}\r\n"
            f"webhook-signature: {signatures.sign(secrets, row.webhook_id, at, row.body)}\r\n",
        ]
        # The event's (its timer's) correlation id, when it can go in a header
        # as it is: the envelope carries it in any case.
        correlation = row.correlation_id
        if correlation and _safe(correlation):
            lines.append(f"X-Correlation-ID: {correlation}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1") + data


def _outcome(
    row: Claimed,
    token: UUID,
    started: float,
    status: int | None,
    error: str | None,
    retry_after: float | None = None,
) -> Outcome:
    return Outcome(
        row.id,
        row.subscription_id,
        token,
        row.attempts + 1,
        status,
        int((time.monotonic() - started) * 1000),
        error,
        retry_after,
        tenant_id=row.tenant_id,
    )


@lru_cache(maxsize=MAX_DESTINATIONS)
def _head(url: str, host_name: str) -> str | None:
    """The request's lines that depend on the URL alone (``host_name``: the
    checked destination's host), each ending in CRLF; None if the URL has
    characters that cannot go in them as they are."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    try:
        if not host.isascii():  # an internationalized name: its IDNA form
            host = host_name.encode("idna").decode() + (f":{parts.port}" if parts.port else "")
    except UnicodeError:
        return None
    target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), _AS_IS)
    if not (_safe(host) and _safe(target)):
        return None
    lines = [
        f"POST {target} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"User-Agent: {USER_AGENT}",
    ]
    if parts.username is not None:
        raw = f"{parts.username}:{parts.password or ''}".encode()
        lines.append("Authorization: Basic " + base64.b64encode(raw).decode())
    return "".join(line + "\r\n" for line in lines)

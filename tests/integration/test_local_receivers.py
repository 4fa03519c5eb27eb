"""The local receivers the benchmarks, the chaos run and the README rely on.

- bench/receiver.py: what it records is what P6 and ``make chaos`` report, so a
  ``webhook-id`` answered 2xx twice must count as a duplicate, a 500 or a hang
  must not count as received, a dead route must never answer, and the sampled
  signature check must catch a bad signature.
- devtools/receiver.py (the README's walk-through): 204 for a verified event,
  printed once however often it comes; 400 for a bad signature.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer

import pytest

from bench.receiver import Receiver, Route, serve
from devtools.receiver import make_handler
from models.signatures import headers as signed_headers
from models.signatures import new_secret


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def bench_receiver():
    """``start(routes)``: a bench receiver on a loop thread; yields (receiver, port)."""
    running = []

    def start(routes: dict[str, Route], verify_every: int = 0):
        receiver = Receiver(routes, verify_every=verify_every, seed=7)
        port = _free_port()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        server = asyncio.run_coroutine_threadsafe(serve(receiver, "127.0.0.1", port), loop)
        running.append((loop, thread, server))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        return receiver, port

    yield start
    for loop, thread, server in running:
        server.cancel()
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def _post(port: int, path: str, msg_id: str, body: bytes = b"{}", timeout: float = 2.0, **extra):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        headers={"webhook-id": msg_id, **extra},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_bench_receiver_counts_a_second_2xx_for_one_webhook_id_as_a_duplicate(bench_receiver):
    receiver, port = bench_receiver({"/fast": Route("fast")})
    assert _post(port, "/fast", "evt_1") == 200
    assert _post(port, "/fast", "evt_2") == 200
    assert _post(port, "/fast", "evt_1") == 200
    stats = receiver.routes["/fast"].stats()
    assert (stats["ids_received"], stats["duplicates"], stats["ids_duplicated"]) == (2, 1, 1)
    first, answered, requests = receiver.routes["/fast"].ids["evt_1"]
    assert (answered, requests) == (2, 2) and first <= time.time()


def test_bench_receiver_counts_only_2xx_as_received(bench_receiver):
    receiver, port = bench_receiver(
        {"/flaky": Route("flaky", fail=0.5, hang=0.2, hang_s=0.3), "/dead": Route("dead")}
    )
    codes = []
    for i in range(60):
        try:
            codes.append(_post(port, "/flaky", f"evt_{i}", timeout=1.0))
        except (TimeoutError, urllib.error.URLError, ConnectionError):
            codes.append("hung")
    route = receiver.routes["/flaky"]
    stats = route.stats()
    assert codes.count(200) == stats["answered_2xx"] == stats["ids_received"]
    assert codes.count(500) == stats["answered_500"] > 0
    assert codes.count("hung") == stats["hung"] > 0
    assert stats["duplicates"] == 0
    # A hung or failed request leaves its id unreceived.
    assert all((v[0] is None) == (v[1] == 0) for v in route.ids.values())

    with pytest.raises((TimeoutError, urllib.error.URLError)):
        _post(port, "/dead", "evt_x", timeout=0.5)
    assert receiver.routes["/dead"].stats()["ids_received"] == 0


def test_bench_receiver_sample_check_catches_a_bad_signature(bench_receiver):
    secret = new_secret()
    receiver, port = bench_receiver({"/fast": Route("fast", secret=secret)}, verify_every=1)
    body = '{"id": "evt_1"}'
    good = signed_headers([secret], "evt_1", int(time.time()), body)
    bad = signed_headers([new_secret()], "evt_2", int(time.time()), body)
    _post(port, "/fast", "evt_1", body.encode(), **good)
    _post(port, "/fast", "evt_2", body.encode(), **bad)
    stats = receiver.routes["/fast"].stats()
    assert (stats["verified"], stats["bad_signatures"]) == (1, 1)


def test_devtools_receiver_prints_a_verified_event_once_and_refuses_a_bad_signature():
    secret = new_secret()
    printed: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler([secret], out=printed.append))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_port
    try:
        body = '{"id": "evt_5", "type": "sla.timer.due", "data": {"lead_id": "77"}}'
        good = signed_headers([secret], "evt_5", int(time.time()), body)
        assert _post(port, "/hooks/sla", "evt_5", body.encode(), **good) == 204
        assert _post(port, "/hooks/sla", "evt_5", body.encode(), **good) == 204
        bad = signed_headers([new_secret()], "evt_6", int(time.time()), body)
        assert _post(port, "/hooks/sla", "evt_6", body.encode(), **bad) == 400
    finally:
        server.shutdown()
    assert printed[0].startswith("evt_5 sla.timer.due (verified)")
    assert '"lead_id": "77"' in printed[0]
    assert printed[1] == "evt_5: again (a retry; already printed)"
    assert "evt_6: signature does not verify" in printed[2]
    assert len(printed) == 3

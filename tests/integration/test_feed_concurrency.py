"""The pull feed under concurrent writers: no event is ever skipped or served
twice, even when transactions commit out of id order.

An identity value is taken at insert, not at commit. When transaction A takes
an id, transaction B takes a later one and commits first, a reader that keeps
"the last id seen" reads B's event, moves past A's id, and never sees A's event
once A commits. The first test forces exactly that interleaving and shows the
naive cursor skipping while the feed does not; the second runs writers that
commit in random order (the forced interleaving among them) while a reader
pages the feed all along.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import text

from tests.support.api import Api
from tests.support.feed import event_row, ids_of, page, read_to_end, settle, write_events

NAIVE = text("SELECT id FROM outbox_events WHERE tenant_id = :t AND id > :last ORDER BY id")


def naive_read(engine, tenant_id, last: int) -> list[int]:
    """The hazard: a reader whose cursor is the last id it has seen."""
    with engine.connect() as conn:
        return list(conn.execute(NAIVE, {"t": tenant_id, "last": last}).scalars())


def test_a_naive_id_cursor_skips_an_event_the_feed_serves(api, engine, tenant):
    with engine.connect() as a:
        txn_a = a.begin()
        [id_a] = write_events(a, [event_row(tenant[0], n="A")])  # takes the lower id
        with engine.begin() as b:
            [id_b] = write_events(b, [event_row(tenant[0], n="B")])  # commits first
        assert id_a < id_b

        naive_seen = naive_read(engine, tenant[0], 0)
        assert naive_seen == [id_b]
        # The feed serves neither yet: A, older than B, is still open.
        items, cursor = page(api)
        assert items == []
        txn_a.commit()

    naive_seen += naive_read(engine, tenant[0], max(naive_seen))
    assert id_a not in naive_seen  # the naive cursor skipped A's event for good

    settle(engine)
    items, _ = read_to_end(api, after=cursor)
    assert ids_of(items) == [id_a, id_b]  # in the order of the transactions' ids


# -- random writers, and the forced interleaving among them, with a paging reader

WRITERS = 3  # for the tenant, plus one for the other tenant and one through the API
API_STARTS = 15
TRANSACTIONS = 25  # per writer, at least
# The writers go on until the reader has been served this many events, so the
# reader surely pages while they write, even when another session on the
# server holds the feed back for a while (up to WRITE_FOR_AT_MOST_S).
SERVED_WHILE_WRITING = 20
WRITE_FOR_AT_MOST_S = 30.0
FORCED = 3  # forced out-of-order pairs
ABORT_ONE_IN = 8


@dataclass
class Reader:
    """Counts the reader's pages and the events served, for the writers."""

    pages: int = 0
    served: int = 0
    deadline: float = field(default_factory=lambda: time.monotonic() + WRITE_FOR_AT_MOST_S)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read_one(self, served: int) -> None:
        with self.lock:
            self.pages += 1
            self.served += served

    def writers_may_stop(self) -> bool:
        return self.served >= SERVED_WHILE_WRITING or time.monotonic() > self.deadline

    def wait_for_pages(self, n: int, timeout: float = 10.0) -> None:
        start = self.pages
        deadline = time.monotonic() + timeout
        while self.pages < start + n:
            assert time.monotonic() < deadline, "the reader stopped paging"
            time.sleep(0.005)


def _writer(engine, tenant_id, seed: int, reader: Reader, failures: list) -> None:
    """Transactions of 1 to 3 events, inserted one by one with pauses between,
    so ids interleave across transactions; some roll back."""
    rng = random.Random(seed)
    try:
        for t in itertools.count():
            if t >= TRANSACTIONS and reader.writers_may_stop():
                break
            with engine.connect() as conn:
                txn = conn.begin()
                for k in range(rng.randint(1, 3)):
                    write_events(conn, [event_row(tenant_id, n=f"{seed}.{t}.{k}")])
                    time.sleep(rng.uniform(0, 0.004))
                time.sleep(rng.uniform(0, 0.01))
                if rng.randrange(ABORT_ONE_IN) == 0:
                    txn.rollback()
                else:
                    txn.commit()
            time.sleep(rng.uniform(0, 0.003))
    except Exception as exc:  # reported by the test
        failures.append(exc)


def _api_starts(app, key: str, failures: list) -> None:
    """Timers started through the API: their sla.timer.started events."""
    try:
        api = Api(app.test_client(), key)
        for n in range(API_STARTS):
            api.start(lead_id=f"lead-{n}")
    except Exception as exc:
        failures.append(exc)


def _forced_pairs(engine, tenant_id, reader: Reader, pairs: list, failures: list) -> None:
    """A takes an id, B a later one and commits; the reader pages (twice, so at
    least one page starts after B's commit); then A commits."""
    try:
        for n in range(FORCED):
            with engine.connect() as a:
                txn_a = a.begin()
                [id_a] = write_events(a, [event_row(tenant_id, n=f"forced A{n}")])
                with engine.begin() as b:
                    [id_b] = write_events(b, [event_row(tenant_id, n=f"forced B{n}")])
                reader.wait_for_pages(2)
                txn_a.commit()
            pairs.append((id_a, id_b))
            time.sleep(0.02)
    except Exception as exc:
        failures.append(exc)


def test_concurrent_writers_and_a_paging_reader_see_every_event_exactly_once(
    app, api, engine, tenant, other_tenant
):
    failures: list = []
    pairs: list = []
    reader = Reader()
    threads = [
        threading.Thread(target=_writer, args=(engine, owner, seed, reader, failures))
        for seed, owner in enumerate([tenant[0]] * WRITERS + [other_tenant[0]])
    ]
    threads.append(threading.Thread(target=_api_starts, args=(app, tenant[1], failures)))
    threads.append(
        threading.Thread(target=_forced_pairs, args=(engine, tenant[0], reader, pairs, failures))
    )
    for thread in threads:
        thread.start()

    served: list[dict] = []
    cursor = None
    rng = random.Random(7)
    while any(t.is_alive() for t in threads):
        items, cursor = page(api, after=cursor, limit=rng.randint(1, 7))
        served += items
        reader.read_one(len(items))
        time.sleep(0.002)
    for thread in threads:
        thread.join()
    assert not failures, failures

    read_while_writing = len(served)
    settle(engine)
    served += read_to_end(api, after=cursor, limit=50)[0]
    seen = ids_of(served)

    with engine.connect() as conn:
        committed = dict(
            conn.execute(
                text("SELECT id, txid FROM outbox_events WHERE tenant_id = :t"), {"t": tenant[0]}
            ).all()
        )
    assert len(seen) == len(set(seen)), "an event was served twice"
    assert set(seen) == set(committed), (
        f"skipped: {sorted(set(committed) - set(seen))}, foreign or aborted: "
        f"{sorted(set(seen) - set(committed))}"
    )
    # Served in the feed's order, (txid, id), which is not id order: the
    # writers' transactions did interleave.
    assert seen == sorted(seen, key=lambda i: (committed[i], i))
    assert seen != sorted(seen)
    assert len(pairs) == FORCED
    assert all(a < b and seen.index(a) < seen.index(b) for a, b in pairs)
    assert read_while_writing >= SERVED_WHILE_WRITING, "the feed was held back too long"
    assert sum(item["type"] == "sla.timer.started" for item in served) == API_STARTS

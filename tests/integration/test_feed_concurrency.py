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

import random
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import text

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

WRITERS = 3  # for the tenant, plus one for the other tenant
TRANSACTIONS = 25  # per writer
FORCED = 3  # forced out-of-order pairs
ABORT_ONE_IN = 8


@dataclass
class Reader:
    """Counts the pages the reader has read, so a writer can wait for one."""

    pages: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read_one(self) -> None:
        with self.lock:
            self.pages += 1

    def wait_for_pages(self, n: int, timeout: float = 10.0) -> None:
        start = self.pages
        deadline = time.monotonic() + timeout
        while self.pages < start + n:
            assert time.monotonic() < deadline, "the reader stopped paging"
            time.sleep(0.005)


def _writer(engine, tenant_id, seed: int, failures: list) -> None:
    """Transactions of 1 to 3 events, inserted one by one with pauses between,
    so ids interleave across transactions; some roll back."""
    rng = random.Random(seed)
    try:
        for t in range(TRANSACTIONS):
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
    api, engine, tenant, other_tenant
):
    failures: list = []
    pairs: list = []
    reader = Reader()
    threads = [
        threading.Thread(target=_writer, args=(engine, tenant[0], seed, failures))
        for seed in range(WRITERS)
    ]
    threads.append(threading.Thread(target=_writer, args=(engine, other_tenant[0], 99, failures)))
    threads.append(
        threading.Thread(target=_forced_pairs, args=(engine, tenant[0], reader, pairs, failures))
    )
    for thread in threads:
        thread.start()

    seen: list[int] = []
    read_while_writing = 0
    cursor = None
    rng = random.Random(7)
    while any(t.is_alive() for t in threads):
        items, cursor = page(api, after=cursor, limit=rng.randint(1, 7))
        seen += ids_of(items)
        read_while_writing += len(items)
        reader.read_one()
        time.sleep(0.002)
    for thread in threads:
        thread.join()
    assert not failures, failures

    settle(engine)
    items, _ = read_to_end(api, after=cursor, limit=50)
    seen += ids_of(items)

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
    assert read_while_writing > 0, "the reader should page while the writers write"

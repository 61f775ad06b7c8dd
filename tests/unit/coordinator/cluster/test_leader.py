"""The Leader over a real store, on both engines: two coordinators on one database,
one runs the singleton work; a clean stop hands it over at once, a holder that stops
renewing (paused) is replaced after the TTL and its fenced writes are refused, and
work whose lease cannot be renewed in time is cancelled at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from coordinator.cluster import lease
from coordinator.cluster.leader import Leader
from coordinator.store.fence import LeaseLost
from coordinator.store.sql import SqlStore, schema

TTL = 1.5
RENEW = 0.3


class Worker:
    """Singleton work that writes (fenced) what it did, and remembers its failures."""

    def __init__(self, store: SqlStore, who: str) -> None:
        self.store = store
        self.who = who
        self.runs = 0
        self.refused = 0
        self.cancelled = 0

    async def work(self) -> None:
        self.runs += 1
        n = 0
        try:
            while True:
                n += 1
                try:
                    # In a thread, as the store's callers do: on SQLite the other
                    # store's writer may hold the file's lock for a while.
                    await asyncio.to_thread(self._write, f"{self.who}-{self.runs}-{n}")
                except LeaseLost:
                    self.refused += 1
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    def _write(self, name: str) -> None:
        with self.store.batch() as db:
            db.execute(sa.insert(schema.tenants).values(name=name, created_at=time.time()))


def _leader(store: SqlStore, who: str, ttl: float = TTL) -> tuple[Leader, Worker]:
    leader = Leader(store, who, ttl_s=ttl, renew_s=RENEW)
    worker = Worker(store, who)
    leader.add("work", worker.work)
    return leader, worker


def _writers(store: SqlStore) -> set[str]:
    names = [r[0] for r in store._rows(sa.select(schema.tenants.c.name))]
    return {n.split("-")[0] for n in names if n != "default"}


async def _until(check: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("not in time")
        await asyncio.sleep(0.05)


@pytest.fixture
def two(
    new_store: Callable[..., SqlStore], new_database: Callable[[], str]
) -> tuple[SqlStore, SqlStore]:
    target = new_database()
    return new_store(target), new_store(target)


async def test_one_leads_and_a_clean_stop_hands_over_at_once(
    two: tuple[SqlStore, SqlStore],
) -> None:
    a_store, b_store = two
    # A TTL far longer than a hand-over may take on a loaded machine: B leading well
    # before it shows the lease was released, not waited out.
    ttl = 30.0
    a, a_work = _leader(a_store, "A", ttl)
    b, b_work = _leader(b_store, "B", ttl)
    await a.start("https://a", "wss://a")
    await b.start("https://b", "wss://b")
    try:
        assert a.leading and not b.leading
        await asyncio.sleep(3 * RENEW)
        assert a.leading and not b.leading and b_work.runs == 0
        assert _writers(a_store) == {"A"}
        assert {c.id for c in a_store.live_coordinators(ttl)} == {"A", "B"}
        first = a.epoch
        await a.stop()
        assert a_work.cancelled == 1 and not a.leading
        await _until(lambda: b.leading and b_work.runs == 1, within=ttl / 3)
        assert b.epoch > first
        await _until(lambda: _writers(a_store) == {"A", "B"}, within=ttl / 3)
        assert a_work.refused == 0
    finally:
        await a.stop()
        await b.stop()


async def test_a_paused_holder_is_replaced_and_its_writes_are_refused(
    two: tuple[SqlStore, SqlStore],
) -> None:
    a_store, b_store = two
    a, a_work = _leader(a_store, "A")
    b, b_work = _leader(b_store, "B")
    await a.start()
    await b.start()
    try:
        assert a.leading
        first = a.epoch
        # A "pauses": its lease loop stops renewing, its singleton work goes on writing.
        for task in a._tasks:
            task.cancel()
        await _until(lambda: b.leading, within=TTL + 2 * RENEW + 1.0)
        assert b.epoch > first
        await _until(lambda: a_work.refused > 0, within=1.0)
        assert a_work.cancelled == 0  # A has not noticed yet: the store refused it
        # A wakes: its renewal is refused, its work is cancelled
        await a._attempt()
        assert not a.leading and a_work.cancelled == 1
        assert b.leading and b_work.refused == 0
    finally:
        await a.stop()
        await b.stop()


async def test_work_stops_at_the_local_deadline_and_starts_again_on_a_new_tenure(
    two: tuple[SqlStore, SqlStore],
) -> None:
    store, _ = two
    a, work = _leader(store, "A")
    await a.start()
    try:
        first = a.epoch
        assert a.leading and a.tenures == 1
        await asyncio.sleep(0.1)
        # The database did not answer before the deadline (as if the clock jumped past it):
        real = a.clock
        a.clock = lambda: real() + TTL
        assert not a.leading  # at once, without asking the database
        a.clock = real
        a.tenure = lease.Tenure(a.epoch, real() - 0.01)  # the deadline passed unrenewed
        await a._attempt()  # stops the work, then takes the lease again (still its own)
        assert work.cancelled == 1
        assert a.leading and a.tenures == 2 and a.epoch == first + 1
        await _until(lambda: work.runs == 2, within=1.0)
    finally:
        await a.stop()

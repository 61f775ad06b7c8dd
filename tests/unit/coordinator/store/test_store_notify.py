"""The change feed (#23) on both engines: two stores on one database, as two
coordinators would hold them. On PostgreSQL a bump on one is seen by the other's feed,
only once committed; on SQLite (one coordinator) the feed stays silent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from coordinator.store.ports import ChangeFeed
from coordinator.store.sql import SqlStore, schema
from coordinator.store.sql.core import NOTIFY_PAYLOAD_MAX, bump, notify_payloads

WAIT_S = 3.0
QUIET_S = 0.3


def _add_machines(store: SqlStore, ids: list[str]) -> None:
    with store._tx() as db:
        db.execute(
            sa.insert(schema.machines),
            [{"id": mid, "enrolled_at": time.time()} for mid in ids],
        )


class Listener:
    """Reads a feed in a task of its own, as the hub does (a wait that times out must
    not cancel the feed's generator: that would end it)."""

    def __init__(self, store: SqlStore) -> None:
        self.changes = store.changes()
        self.queue: asyncio.Queue[list[str] | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for batch in self.changes:
            self.queue.put_nowait(batch)

    async def next(self) -> list[str] | None:
        return await asyncio.wait_for(self.queue.get(), WAIT_S)

    async def collect(self, want: set[str]) -> set[str]:
        """Batches until every id in `want` arrived (None, a reconnection, is not expected)."""
        seen: set[str] = set()
        while not want <= seen:
            batch = await self.next()
            assert batch is not None
            seen.update(batch)
        return seen

    async def quiet(self) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.queue.get(), QUIET_S)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.changes.aclose()


def test_payloads_stay_under_postgresqls_limit_and_keep_every_id() -> None:
    ids = {f"machine-{i:04d}-{'x' * 48}" for i in range(400)}
    payloads = notify_payloads(ids)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= NOTIFY_PAYLOAD_MAX < 8000 for p in payloads)
    assert {mid for p in payloads for mid in p.split()} == ids
    assert notify_payloads(set()) == []


def test_the_store_is_a_change_feed(store: SqlStore) -> None:
    assert isinstance(store, ChangeFeed)


def test_revisions_and_revoked_serials_in_one_read(store: SqlStore) -> None:
    _add_machines(store, ["m1", "m2", "m3"])
    with store._tx() as db:
        bump(db, {"m1"})
        db.execute(sa.update(schema.machines).where(schema.machines.c.id == "m3").values(revoked=1))
        db.execute(
            sa.insert(schema.revoked_certs).values(serial="s-old", machine_id="m2", revoked_at=1.0)
        )
    assert store.desired_revisions(["m1", "m2", "m3", "nobody"]) == {"m1": 1, "m2": 0}
    assert store.revoked_serials(["s-old", "s-new"]) == {"s-old"}
    assert store.desired_revisions([]) == {}


async def test_sqlite_feed_is_silent(new_database: Callable[[], str], engine: str) -> None:
    if engine != "sqlite":
        pytest.skip("SQLite only")
    target = new_database()
    a, b = SqlStore(target), SqlStore(target)
    try:
        assert not a.shared and not b.shared
        _add_machines(a, ["m1"])
        a.announce(["m1"])
        feed = Listener(b)
        with a._tx() as db:
            bump(db, {"m1"})
        await feed.quiet()
        await feed.close()
    finally:
        a.close()
        b.close()


async def test_a_bump_on_one_store_reaches_the_others_feed_on_commit(
    new_database: Callable[[], str], engine: str, new_store: Callable[..., SqlStore]
) -> None:
    if engine != "postgresql":
        pytest.skip("LISTEN/NOTIFY: PostgreSQL only")
    target = new_database()
    a, b = new_store(target), new_store(target)
    assert a.shared and b.shared
    _add_machines(a, ["m1", "m2", "m3"])
    feed = Listener(b)
    try:
        assert await feed.next() is None  # connected: "check everything" first
        started = time.monotonic()
        with a._tx() as db:
            bump(db, {"m1", "m2"})
        assert await feed.collect({"m1", "m2"}) == {"m1", "m2"}
        assert time.monotonic() - started < 1.0
        assert b.desired_revisions(["m1", "m2", "m3"]) == {"m1": 1, "m2": 1, "m3": 0}

        # Nothing before COMMIT, nothing at all after a rollback.
        with pytest.raises(RuntimeError), a._tx() as db:
            bump(db, {"m3"})
            await feed.quiet()
            raise RuntimeError("roll back")
        await feed.quiet()
        assert b.desired_revisions(["m3"]) == {"m3": 0}

        # Other changes, committed elsewhere, are announced.
        a.announce(["m3"])
        assert await feed.collect({"m3"}) == {"m3"}
    finally:
        await feed.close()


async def test_many_machines_in_one_commit_arrive_whole(
    new_database: Callable[[], str], engine: str, new_store: Callable[..., SqlStore]
) -> None:
    if engine != "postgresql":
        pytest.skip("LISTEN/NOTIFY: PostgreSQL only")
    target = new_database()
    a, b = new_store(target), new_store(target)
    ids = [f"host-{i:05d}.example.internal.fleet" for i in range(2000)]
    _add_machines(a, ids)
    feed = Listener(b)
    try:
        assert await feed.next() is None
        with a._tx() as db:
            bump(db, set(ids))
        assert await feed.collect(set(ids)) == set(ids)
    finally:
        await feed.close()


async def test_the_feed_reconnects_and_says_so(
    new_database: Callable[[], str], engine: str, new_store: Callable[..., SqlStore]
) -> None:
    if engine != "postgresql":
        pytest.skip("LISTEN/NOTIFY: PostgreSQL only")
    target = new_database()
    a, b = new_store(target), new_store(target)
    _add_machines(a, ["m1"])
    feed = Listener(b)
    try:
        assert await feed.next() is None
        with a._tx() as db:  # the listener's connection dies (a server restart, a proxy)
            killed = db.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query LIKE 'LISTEN%' AND datname = current_database()"
                )
            ).scalars()
            assert list(killed) == [True]
        assert await feed.next() is None  # back, and anything may have been missed
        with a._tx() as db:
            bump(db, {"m1"})
        assert await feed.collect({"m1"}) == {"m1"}
    finally:
        await feed.close()

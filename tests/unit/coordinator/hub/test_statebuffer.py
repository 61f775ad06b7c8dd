"""Observed state written behind: nothing queued is left unwritten."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.hub.statebuffer import StateBuffer
from coordinator.store.sql import SqlStore
from tests.harness.databases import open_test_store


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqlStore]:
    """A store on the run's engine (MOORAGE_TEST_DATABASE)."""
    store = open_test_store(tmp_path)
    yield store
    store.close()


async def test_every_queued_write_lands_even_when_added_during_a_flush_wait(db: SqlStore) -> None:
    buffer = StateBuffer(db, interval_s=0.05)
    task = asyncio.create_task(buffer.run())
    written: list[int] = []
    try:
        for i in range(20):
            buffer.add(functools.partial(written.append, i))
            await asyncio.sleep(0.013)  # adds land before, during and after each sleep
        await asyncio.sleep(0.2)
        assert written == list(range(20))
    finally:
        task.cancel()


def test_one_failing_update_does_not_cost_the_others(db: SqlStore) -> None:
    buffer = StateBuffer(db)

    def token(name: str) -> Callable[[], None]:
        def write() -> None:
            db.create_join_token(name, "h", now=1, ttl_s=10)

        return write

    def boom() -> None:
        raise RuntimeError("boom")

    buffer.add(token("t1"))
    buffer.add(boom)
    buffer.add(token("t2"))
    buffer.flush()
    assert [t.id for t in db.list_join_tokens()] == ["t1", "t2"]


async def test_the_periodic_flush_writes_off_the_event_loop_in_order(db: SqlStore) -> None:
    """A slow batch runs in a thread: the loop keeps ticking meanwhile, and a synchronous
    flush taken during it lands after it (batches are written in the order taken)."""
    import threading
    import time

    buffer = StateBuffer(db)
    loop_thread = threading.get_ident()
    written: list[tuple[str, bool]] = []

    def slow() -> None:
        time.sleep(0.3)
        written.append(("slow", threading.get_ident() == loop_thread))

    buffer.add(slow)
    flushing = asyncio.create_task(buffer.flush_in_thread())
    ticks = 0
    for _ in range(10):
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 10 and not written, "the loop runs while the batch is written"
    buffer.add(lambda: written.append(("next", threading.get_ident() == loop_thread)))
    assert buffer.flush()  # waits for the batch in flight, then writes its own
    assert written == [("slow", False), ("next", True)]
    assert await flushing

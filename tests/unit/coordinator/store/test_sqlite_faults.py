"""A full or failing disk: named, retried, and never leaves a transaction open.

The fault is real SQLite's: `PRAGMA max_page_count` makes the database file full, so
SQLite answers SQLITE_FULL ("database or disk is full") exactly as on a full disk.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.hub.sessions import Hub
from coordinator.hub.statebuffer import StateBuffer
from coordinator.metrics import CoordinatorMetrics
from coordinator.store.ports import StorageUnavailable
from coordinator.store.sql import SqlStore as Storage
from coordinator.store.sql import storage_fault
from proto.messages import UnitStatus


def fill(db: Storage) -> None:
    pages = db.db.exec_driver_sql("PRAGMA page_count").scalar()
    db.db.exec_driver_sql(f"PRAGMA max_page_count={pages}")


def free(db: Storage) -> None:
    db.db.exec_driver_sql("PRAGMA max_page_count=1073741823")


def big_states(n: int = 200) -> list[UnitStatus]:
    return [UnitStatus(name=f"u{i}.service", message="x" * 400) for i in range(n)]


def test_faults_are_classified() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    assert storage_fault(full) == "full"
    assert storage_fault(sqlite3.OperationalError("disk I/O error")) == "io"
    assert storage_fault(OSError(errno.ENOSPC, "No space left on device")) == "full"
    assert storage_fault(sqlite3.IntegrityError("UNIQUE constraint failed")) is None
    assert storage_fault(ValueError("x")) is None


def test_a_full_database_raises_storage_unavailable_and_recovers(tmp_path: Path) -> None:
    db = Storage(tmp_path / "m.db")
    fill(db)
    with pytest.raises(StorageUnavailable) as info:
        db.record_unit_states("m1", big_states(), [], 1.0)
    assert info.value.kind == "full"
    assert "coordinator storage is full" in str(info.value)
    assert db.health.fault == "full" and db.health.failures == 1
    assert not db.db.in_transaction(), "a failed write must not leave its transaction open"
    free(db)
    assert db.probe()
    assert db.health.fault == ""
    db.record_unit_states("m1", big_states(), [], 2.0)
    assert len(db.unit_states(machine_id="m1")) == 200


def test_buffered_writes_wait_while_full_and_land_in_order(tmp_path: Path) -> None:
    db = Storage(tmp_path / "m.db")
    buffer = StateBuffer(db)
    fill(db)
    buffer.add(lambda: db.record_unit_states("m1", big_states(), [], 1.0))
    stopped = [UnitStatus(name="u0.service", active_state="inactive")]
    buffer.add(lambda: db.record_unit_states("m1", stopped, [], 2.0))
    assert not buffer.flush()
    assert buffer.stalled and buffer.pending == 2
    assert not buffer.flush()  # still full: still kept
    assert buffer.pending == 2
    free(db)
    assert buffer.flush()
    assert not buffer.stalled and buffer.pending == 0
    states = {s.name: s for s in db.unit_states(machine_id="m1")}
    assert states["u0.service"].active_state == "inactive"  # the later report won
    assert len(states) == 200


async def test_the_buffer_retries_by_itself(tmp_path: Path) -> None:
    db = Storage(tmp_path / "m.db")
    buffer = StateBuffer(db, interval_s=0.01, retry_s=0.05)
    task = asyncio.create_task(buffer.run())
    try:
        fill(db)
        buffer.add(lambda: db.record_unit_states("m1", big_states(), [], 1.0))
        # polled, not slept: between retries the write is in flight (not pending)
        assert await until(lambda: buffer.stalled and buffer.pending == 1)
        await asyncio.sleep(0.2)
        assert buffer.stalled, "still full: still retried"
        free(db)
        assert await until(lambda: buffer.pending == 0 and not buffer.stalled)
        assert len(db.unit_states(machine_id="m1")) == 200
    finally:
        task.cancel()


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Whether `condition` holds within `timeout_s` (checked every 10 ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _hub(db: Storage) -> Hub:
    return Hub(db, None, CoordinatorMetrics(), heartbeat_s=1, lost_after_s=5)  # type: ignore[arg-type]


def _enrol(db: Storage, mid: str) -> None:
    with db.batch() as tx:
        tx.exec_driver_sql(
            "INSERT INTO machines (id, enrolled_at, state) VALUES (?, 0, 'connected')", (mid,)
        )


async def test_lost_is_retried_until_stored_and_never_before_disconnected(tmp_path: Path) -> None:
    db = Storage(tmp_path / "m.db")
    _enrol(db, "m1")
    hub = _hub(db)
    lost: list[str] = []

    async def on_state(mid: str, state: str) -> None:
        lost.append(f"{mid}:{state}")

    hub.on_state_change.append(on_state)
    fill(db)
    # the session dropped while the disk was full: `disconnected` waits in the buffer
    hub.disconnected_since["m1"] = 100.0
    hub.buffer.add(lambda: db.set_machine_state("m1", "disconnected", 100.0))
    hub.buffer.add(lambda: db.record_unit_states("m1", big_states(), [], 100.0))
    await hub.check_liveness(200.0)
    assert lost == [] and "m1" in hub.disconnected_since
    machine = db.get_machine("m1")
    assert machine is not None and machine.state == "connected"
    free(db)
    await hub.check_liveness(201.0)
    machine = db.get_machine("m1")
    assert machine is not None and machine.state == "lost"
    assert lost == ["m1:lost"] and "m1" not in hub.disconnected_since


def test_a_flapping_disk_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    from coordinator.store.health import StorageHealth

    health = StorageHealth()
    with caplog.at_level("WARNING", logger="coordinator.storage"):
        for _ in range(5):
            health.failed("full", "database or disk is full")
            health.failed("full", "database or disk is full")
            health.ok()
        health.failed("full", "database or disk is full")
    text = caplog.text
    assert text.count("coordinator storage is full") == 1
    assert text.count("writable again") == 1
    assert health.fault == "full" and health.failures == 11

"""The deploy tables in an SQLite file of an older schema, and stickers and drift.

Groups, applications, deployments, releases and targets on both engines:
test_store_deploy.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from coordinator.store.sql import SqlStore as Storage
from coordinator.store.sql.legacy import LEGACY_MIGRATIONS as MIGRATIONS
from coordinator.store.sql.migrate import head
from proto.messages import DriftEntry, Sticker, StickerUnit
from tests.harness.databases import open_test_store


def test_a_database_of_the_previous_schema_is_upgraded(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    for script in MIGRATIONS[:3]:
        raw.executescript(script)
    raw.execute("PRAGMA user_version=3")
    raw.close()
    db = Storage(tmp_path / "m.db")
    assert db.schema_version == head()
    assert db.group_by_name("default") is not None


def test_stickers_and_drift_are_replaced_per_machine(tmp_path: Path) -> None:
    store = open_test_store(tmp_path)
    s1 = Sticker(
        deployment="web-default",
        release="r1",
        version="1",
        units={"web.service": StickerUnit("h", "s")},
    )
    s2 = Sticker(deployment="db-default", release="r9", version="3", units={})
    store.put_stickers("m1", [s1, s2], now=10)
    store.put_stickers("m1", [s1], now=11)
    (only,) = store.stickers("m1")
    assert only.sticker == s1 and only.reported_at == 11
    entry = DriftEntry(unit="web.service", kind="file_changed", expected="a", actual="b")
    store.put_drift("m1", [entry], checked_at=12, now=13)
    store.put_drift("m2", [], checked_at=12, now=13)
    assert [(d.machine_id, d.entries) for d in store.drift()] == [("m1", [entry]), ("m2", [])]

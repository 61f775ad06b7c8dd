"""Groups, applications, deployments, releases, stickers and drift on a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from coordinator.models import (
    Application,
    ApplicationVersion,
    Deployment,
    MachineGroup,
    Release,
    ReleaseJob,
    ReleaseUnit,
)
from coordinator.store.ports import DEFAULT_GROUP, DEFAULT_GROUP_ID, Conflict
from coordinator.store.sql import SqlStore as Storage
from coordinator.store.sql.legacy import LEGACY_MIGRATIONS as MIGRATIONS
from coordinator.store.sql.migrate import head
from proto.messages import DriftEntry, Sticker, StickerUnit
from proto.tokens import hash_secret


def enrolled(db: Storage, *ids: str) -> None:
    for i, mid in enumerate(ids):
        db.create_join_token(f"t{i}", hash_secret("s"), now=1, ttl_s=60)
        db.enroll(f"t{i}", mid, serial=f"{i:02x}", not_after=1000, now=2)


def revision(db: Storage, mid: str) -> int:
    machine = db.get_machine(mid)
    assert machine is not None
    return machine.desired_revision


def app_with_version(store: Storage) -> Application:
    app = Application(id="a1", name="web", created_at=1, updated_at=1)
    store.put_application(
        app,
        ApplicationVersion(
            application_id="a1", number=1, label="1", source_config="units: []  # raw", digest="d1"
        ),
    )
    got = store.get_application("a1")
    assert got is not None
    return got


def test_the_default_group_exists_after_migrating(tmp_path: Path) -> None:
    store = Storage(tmp_path / "m.db")
    (group,) = store.list_groups()
    assert (group.id, group.name, group.builtin) == (DEFAULT_GROUP_ID, DEFAULT_GROUP, True)
    assert not store.delete_group(DEFAULT_GROUP_ID)


def test_a_database_of_the_previous_schema_is_upgraded(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    for script in MIGRATIONS[:3]:
        raw.executescript(script)
    raw.execute("PRAGMA user_version=3")
    raw.close()
    db = Storage(tmp_path / "m.db")
    assert db.schema_version == head()
    assert db.group_by_name("default") is not None


def test_versions_keep_the_text_and_labels_are_unique(tmp_path: Path) -> None:
    store = Storage(tmp_path / "m.db")
    app = app_with_version(store)
    assert (app.version, app.version_number, app.source_config) == ("1", 1, "units: []  # raw")
    with pytest.raises(Conflict, match="already has a version '1'"):
        store.put_application(
            app,
            ApplicationVersion(
                application_id="a1", number=2, label="1", source_config="x", digest="d2"
            ),
        )
    store.put_application(
        app,
        ApplicationVersion(
            application_id="a1", number=2, label="2", source_config="y", digest="d2"
        ),
    )
    assert [v.label for v in store.versions("a1")] == ["1", "2"]
    assert store.get_application("a1").version == "2"  # type: ignore[union-attr]
    with pytest.raises(Conflict, match="named 'web'"):
        store.put_application(Application(id="a2", name="web"), None)
    store.put_group(MachineGroup(id="g1", name="racks"))
    with pytest.raises(Conflict):
        store.put_group(MachineGroup(id="g2", name="racks"))


def test_targets_bump_exactly_the_machines_that_change(tmp_path: Path) -> None:
    db = Storage(tmp_path / "m.db")
    store = db
    enrolled(db, "m1", "m2")
    app_with_version(store)
    store.put_deployment(
        Deployment(id="d1", name="web-default", application_id="a1", group_id=DEFAULT_GROUP_ID)
    )
    unit = ReleaseUnit(name="web.service", options=[], hash="h", sha256="s")
    rel = Release(
        id="r1",
        deployment_id="d1",
        seq=1,
        application_id="a1",
        version="1",
        version_number=1,
        units=[unit],
        status="Running",
        batches=1,
    )
    jobs = [ReleaseJob(id=f"j{m}", release_id="r1", machine_id=m, batch=0) for m in ("m1", "m2")]
    store.create_release(rel, jobs)
    assert store.get_deployment("d1").status == "Running"  # type: ignore[union-attr]
    before = revision(db, "m1"), revision(db, "m2")
    assert store.set_targets("d1", {"m1": "r1"}) == {"m1"}
    assert store.set_targets("d1", {"m1": "r1"}) == set()  # unchanged: no bump
    assert (revision(db, "m1"), revision(db, "m2")) == (before[0] + 1, before[1])
    assert store.machine_targets("m1") == [("web-default", "r1")]
    got = store.get_release("r1")
    assert got is not None and got.units == [unit]
    store.update_release("r1", status="Failed", batch=0, message="m2: boom", now=5, finished=True)
    got = store.get_release("r1")
    assert got is not None and (got.status, got.message, got.finished_at) == (
        "Failed",
        "m2: boom",
        5,
    )
    assert store.delete_deployment("d1") == {"m1"}
    assert revision(db, "m1") == before[0] + 2
    assert store.machine_targets("m1") == [] and store.get_release("r1") is None


def test_stickers_and_drift_are_replaced_per_machine(tmp_path: Path) -> None:
    store = Storage(tmp_path / "m.db")
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

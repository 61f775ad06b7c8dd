"""Storage on real SQLite files: migrations, atomic enrolment, durability across reopen."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.store.ports import EnrollRefused, StorageError
from coordinator.store.sql import SqlStore as Storage
from coordinator.store.sql.migrate import head
from proto.tokens import hash_secret


def test_fresh_database_is_at_latest_version_in_wal_mode(tmp_path: Path) -> None:
    db = Storage(tmp_path / "m.db")
    assert db.schema_version == head()
    mode = sqlite3.connect(tmp_path / "m.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Storage(tmp_path / "m.db").close()
    raw = sqlite3.connect(tmp_path / "m.db")
    with raw:
        raw.execute("UPDATE alembic_version SET version_num='9999_from_the_future'")
    raw.close()
    with pytest.raises(StorageError, match="newer"):
        Storage(tmp_path / "m.db")


def test_join_token_enrols_once(tmp_path: Path) -> None:
    db = Storage(tmp_path / "m.db")
    db.create_join_token("t1", hash_secret("s"), now=100, ttl_s=60)
    assert db.join_token_hash("t1", now=101) == hash_secret("s")
    db.enroll("t1", "machine-a", serial="01", not_after=1000, now=101)
    with pytest.raises(EnrollRefused, match="already used"):
        db.join_token_hash("t1", now=102)
    with pytest.raises(EnrollRefused):
        db.enroll("t1", "machine-b", serial="02", not_after=1000, now=102)
    assert [m.id for m in db.list_machines()] == ["machine-a"]


def test_expired_token_is_refused(tmp_path: Path) -> None:
    db = Storage(tmp_path / "m.db")
    db.create_join_token("t1", hash_secret("s"), now=100, ttl_s=60)
    with pytest.raises(EnrollRefused, match="expired"):
        db.join_token_hash("t1", now=160)
    with pytest.raises(EnrollRefused):
        db.enroll("t1", "m", serial="01", not_after=1000, now=161)


def test_revocation_covers_every_issued_certificate(tmp_path: Path) -> None:
    db = Storage(tmp_path / "m.db")
    db.create_join_token("t1", hash_secret("s"), now=100, ttl_s=60)
    db.enroll("t1", "m", serial="01", not_after=1000, now=101)
    db.set_machine_cert("m", "02", 2000, now=500)
    assert not db.is_serial_revoked("01")
    assert db.revoke_machine("m", now=600)
    assert db.is_serial_revoked("01") and db.is_serial_revoked("02")
    assert db.list_machines() == []
    assert db.list_machines(include_revoked=True)[0].revoked
    assert not db.revoke_machine("nope", now=600)


def test_acknowledged_write_survives_kill9(tmp_path: Path) -> None:
    """A child process commits and prints 'ok', then is SIGKILLed: the row must be there."""
    script = (
        "import os, signal, sys\n"
        "from coordinator.store.sql import SqlStore as Storage\n"
        "db = Storage(sys.argv[1])\n"
        "db.create_join_token('t1', 'h', now=1, ttl_s=10)\n"
        "print('ok', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "m.db")], capture_output=True, text=True
    )
    assert out.stdout.strip() == "ok"
    assert out.returncode == -9
    assert [t.id for t in Storage(tmp_path / "m.db").list_join_tokens()] == ["t1"]


def test_a_page_of_units_is_that_slice_of_the_list(tmp_path: Path) -> None:
    from coordinator.models import Unit
    from proto.units import UnitOption

    db = Storage(tmp_path / "m.db")
    for i in (7, 3, 11, 0, 5, 9, 1):  # stored out of order; pages are by name
        opts = [UnitOption("Service", "ExecStart", f"/bin/sleep {i}")]
        machines = [f"m{i % 3}", "m9"] if i % 2 else []
        db.put_unit(
            Unit(name=f"u{i:02d}.service", options=opts, hash=str(i), machines=machines), 1.0
        )
    everything = db.list_units()
    for limit in (1, 2, 3, 7, 10):
        for offset in range(0, 9):
            page, total = db.unit_page(offset, limit)
            assert total == 7
            assert page == everything[offset : offset + limit]


def test_revocation_answers_are_cached_for_at_most_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This store's own revocations (and re-enrolments) take effect at once; another
    writer's (another process on the same file) within REVOCATION_CACHE_S."""
    import time

    from coordinator.store.sql import core

    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    db, other = Storage(tmp_path / "m.db"), Storage(tmp_path / "m.db")
    db.create_join_token("t1", hash_secret("s"), now=100, ttl_s=60)
    db.enroll("t1", "m", serial="01", not_after=1000, now=101)
    assert not db.is_serial_revoked("01")
    # re-enrolment by a token bound to the machine revokes "01", through this store
    db.create_join_token("t2", hash_secret("s"), now=100, ttl_s=60, machine_id="m")
    db.enroll("t2", "m", serial="02", not_after=1000, now=102)
    assert db.is_serial_revoked("01")
    assert not db.is_serial_revoked("02")
    other.revoke_machine("m", now=103)
    assert not db.is_serial_revoked("02")  # cached, another writer
    clock[0] += core.REVOCATION_CACHE_S
    assert db.is_serial_revoked("02")

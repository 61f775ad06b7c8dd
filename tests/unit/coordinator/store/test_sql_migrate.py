"""Upgrades from the numbered era (#23): an SQLite file of any numbered migration (1 to
12) is carried to the last one, stamped as Alembic's baseline, and then has exactly the
schema a new database gets; its rows survive. Newer files are refused untouched."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from coordinator.store.ports import StorageError
from coordinator.store.sql import SqlStore
from coordinator.store.sql.legacy import LEGACY_MIGRATIONS
from coordinator.store.sql.migrate import ALEMBIC_ERA, BASELINE, head

AFFINITY = {"TEXT": "TEXT", "REAL": "REAL", "DOUBLE": "REAL", "INTEGER": "INTEGER", "BLOB": "BLOB"}


def numbered(path: Path, version: int) -> None:
    raw = sqlite3.connect(path, isolation_level=None)
    for script in LEGACY_MIGRATIONS[:version]:
        raw.executescript(script)
    raw.execute(f"PRAGMA user_version={version}")
    raw.close()


def shape(path: Path) -> dict[str, object]:
    """Every table's columns (name, type affinity, NOT NULL, default, key position),
    indexes and foreign keys, as SQLite itself reports them."""
    raw = sqlite3.connect(path)
    out: dict[str, object] = {}
    tables = [
        r[0]
        for r in raw.execute(
            "SELECT name FROM sqlite_master WHERE type='table'"
            " AND name NOT IN ('sqlite_sequence', 'alembic_version')"
        )
    ]
    for t in sorted(tables):
        cols = [
            (name, AFFINITY[typ.upper()], bool(notnull) or bool(pk), (dflt or "").strip("'"), pk)
            for _, name, typ, notnull, dflt, pk in raw.execute(f"PRAGMA table_info('{t}')")
        ]
        indexes = sorted(
            (
                unique,
                tuple(r[2] for r in raw.execute(f"PRAGMA index_info('{name}')")),
            )
            for _, name, unique, origin, _ in raw.execute(f"PRAGMA index_list('{t}')")
            if origin != "pk"
        )
        fks = sorted(
            (r[2], r[3], r[4], r[6]) for r in raw.execute(f"PRAGMA foreign_key_list('{t}')")
        )
        out[t] = (cols, indexes, fks)
    raw.close()
    return out


@pytest.mark.parametrize("version", [1, 2, 5, 6, 9, 12])
def test_a_numbered_file_is_carried_to_the_same_schema_as_a_new_one(
    tmp_path: Path, version: int
) -> None:
    old = tmp_path / "old.db"
    numbered(old, version)
    raw = sqlite3.connect(old)
    with raw:
        raw.execute("INSERT INTO machines (id, hostname, enrolled_at) VALUES ('m1', 'host-1', 1.0)")
    raw.close()
    store = SqlStore(old)
    assert store.schema_version == head()
    machine = store.get_machine("m1")
    assert machine is not None and machine.hostname == "host-1"
    store.close()
    SqlStore(tmp_path / "new.db").close()
    assert shape(old) == shape(tmp_path / "new.db")
    raw = sqlite3.connect(old)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == ALEMBIC_ERA
    assert raw.execute("SELECT version_num FROM alembic_version").fetchone()[0] == head()
    raw.close()


def test_the_baseline_is_the_last_numbered_migration() -> None:
    assert BASELINE == "0001" and len(LEGACY_MIGRATIONS) == 12


def test_a_numbered_file_newer_than_the_last_numbered_migration_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.db"
    numbered(path, 12)
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version=13")
    raw.close()
    with pytest.raises(StorageError, match="newer than this coordinator"):
        SqlStore(path)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 13
    raw.close()


def test_head_is_alembics_head_and_an_up_to_date_database_opens_without_alembic(
    tmp_path: Path,
) -> None:
    """HEAD (what a coordinator compares with, not importing Alembic when the database is
    there) must be the newest revision file's: a new revision must move it."""
    import subprocess
    import sys

    from coordinator.store.sql import migrate

    assert migrate.scripts().get_current_head() == migrate.HEAD == head()
    SqlStore(tmp_path / "db").close()  # created and migrated (Alembic)
    opened = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from coordinator.store.sql import SqlStore;"
            f" SqlStore({str(tmp_path / 'db')!r}).close();"
            " print(sorted(m for m in ('alembic', 'psycopg') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert opened.stdout.strip() == "[]"

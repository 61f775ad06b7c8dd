"""The schema's history, applied: Alembic revisions (`migrations/versions/`) on both
engines, and the road from the numbered SQLite migrations that came before them.

A database the coordinator opens is brought to this coordinator's head, under a lock
(PostgreSQL: an advisory lock, so two coordinators starting together migrate once;
SQLite: the writer's BEGIN IMMEDIATE). An SQLite file of the numbered era (PRAGMA
user_version 1..12, no `alembic_version`) is first carried to the last numbered
migration with those same statements, then stamped as Alembic's baseline, whose
schema is the same. A database a newer coordinator has migrated is refused, never
touched. Files Alembic manages carry user_version 1000, so a coordinator of the
numbered era refuses them too instead of re-creating tables.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from coordinator.store.sql.legacy import LEGACY_MIGRATIONS

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

SCRIPTS = Path(__file__).parent / "migrations"
BASELINE = "0001"
"""The Alembic revision whose schema is the last numbered migration's (12)."""
HEAD = "0006"
"""This coordinator's newest revision (a test checks it is Alembic's head). A database
already there is opened without importing Alembic (~10 MiB a coordinator keeps, #22)."""
ALEMBIC_ERA = 1000
"""SQLite's user_version on files Alembic manages."""
MIGRATION_LOCK = 0x6D6F6F72  # "moor": the advisory lock key coordinators migrate under


class TooNew(Exception):
    """The database was migrated by a newer coordinator."""


def _config(conn: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = conn
    return config


def scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head() -> str:
    """This coordinator's newest revision."""
    return HEAD


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at (None: not under Alembic yet)."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    rows = [r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version"))]
    return rows[0] if len(rows) == 1 else None


def touch(conn: Connection) -> None:
    """A one-row write that changes nothing (the storage probe)."""
    conn.execute(sa.text("UPDATE alembic_version SET version_num=version_num"))


@contextlib.contextmanager
def _locked(conn: Connection) -> Iterator[None]:
    if conn.dialect.name != "postgresql":
        yield
        return
    conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
    conn.commit()
    try:
        yield
    finally:
        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
        conn.commit()


def upgrade(conn: Connection) -> None:
    """Bring the database to `head()` (see the module's docstring)."""
    conn.info["moorage.role"] = "writer"
    with _locked(conn):
        if conn.dialect.name == "sqlite":
            _from_numbered_era(conn)
        current = current_revision(conn)
        conn.rollback()
        if current == HEAD:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql(f"PRAGMA user_version={ALEMBIC_ERA}")
                conn.commit()
            return
        from alembic import command

        script = scripts()
        if current is not None and not _known(script, current):
            raise TooNew(
                f"database schema revision {current} is newer than this coordinator "
                f"understands (its newest is {head()}); upgrade the coordinator"
            )
        if current != script.get_current_head():
            command.upgrade(_config(conn), "head")
            conn.commit()
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(f"PRAGMA user_version={ALEMBIC_ERA}")
            conn.commit()


def _known(script: ScriptDirectory, revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


def _numbered_era(conn: Connection) -> tuple[sqlite3.Connection, int] | None:
    """An SQLite file of the numbered era (user_version > 0, no `alembic_version`): its
    driver connection and version; None for anything else."""
    raw = conn.connection.dbapi_connection
    assert isinstance(raw, sqlite3.Connection)
    version = int(raw.execute("PRAGMA user_version").fetchone()[0])
    has_alembic = raw.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'"
    ).fetchone()
    return None if has_alembic or version == 0 else (raw, version)


def _from_numbered_era(conn: Connection) -> None:
    """Carry a file of the numbered era to migration 12 and stamp it as the baseline."""
    found = _numbered_era(conn)
    if found is None:
        return
    raw, version = found
    if version > len(LEGACY_MIGRATIONS):
        raise TooNew(
            f"database schema version {version} is newer than this coordinator understands"
        )
    # SQLite's way to rebuild a table others reference: foreign keys off (outside any
    # transaction) while a migration runs, checked before it commits.
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        for number in range(version + 1, len(LEGACY_MIGRATIONS) + 1):
            raw.execute("BEGIN IMMEDIATE")
            try:
                for statement in LEGACY_MIGRATIONS[number - 1].split(";"):
                    if statement.strip():
                        raw.execute(statement)
                broken = raw.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise sqlite3.IntegrityError(
                        f"migration {number} left {len(broken)} broken reference(s),"
                        f" first in table {broken[0][0]!r}"
                    )
                raw.execute(f"PRAGMA user_version={number}")
                raw.execute("COMMIT")
            except BaseException:
                raw.execute("ROLLBACK")
                raise
    finally:
        raw.execute("PRAGMA foreign_keys=ON")
    from alembic import command

    command.stamp(_config(conn), BASELINE)
    conn.commit()


def status(conn: Connection) -> tuple[str | None, str]:
    """(the revision the database is at, or None; this coordinator's head), read only.
    A file of the numbered era reads as "numbered-N"."""
    if conn.dialect.name == "sqlite":
        found = _numbered_era(conn)
        if found is not None:
            return f"numbered-{found[1]}", head()
    return current_revision(conn), head()

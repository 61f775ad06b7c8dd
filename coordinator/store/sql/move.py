"""Moving a coordinator's database to another engine: the SQLite file of a coordinator
that outgrew it, into an empty PostgreSQL database (or the other way, or between two
servers), every row of every table, in one pass.

Both databases are first brought to this coordinator's schema head, so the tables are the
same on both sides; the target must hold nothing but the rows every new database starts
with. The source is read inside one transaction (SQLite: BEGIN IMMEDIATE, so a coordinator
still running on it can't write meanwhile; PostgreSQL: REPEATABLE READ, one snapshot);
the target is written in one transaction, so a failure leaves it empty again. Ids the
database assigns continue after the copied ones (PostgreSQL's sequences are moved on).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from coordinator.store.ports import StorageError
from coordinator.store.sql import schema
from coordinator.store.sql.core import SqlCore, describe

CHUNK = 2000
"""Rows per INSERT batch (well below PostgreSQL's 65,535 parameters for any table here)."""

SEED_ROWS = {"machine_groups": 1, "tenants": 1}
"""What a new database holds (the baseline's rows): replaced by the source's own."""


class MoveRefused(StorageError):
    """The target is not empty, or source and target are the same database."""


def move_database(
    source: Path | str,
    target: Path | str,
    progress: Callable[[str, int], None] = lambda table, rows: None,
) -> dict[str, int]:
    """Copy every row of `source` into the empty `target`; the rows copied per table.
    `progress(table, rows)` is called after each table."""
    if describe(source) == describe(target):
        raise MoveRefused("source and target are the same database")
    src = SqlCore(source)
    dst = SqlCore(target)
    try:
        _refuse_unless_empty(dst)
        copied: dict[str, int] = {}
        with _snapshot(src) as reading, dst._tx() as writing:
            for table in schema.metadata.sorted_tables:
                if table.name in SEED_ROWS:
                    writing.execute(sa.delete(table))
                copied[table.name] = _copy_table(reading, writing, table)
                progress(table.name, copied[table.name])
            if dst.dialect == "postgresql":
                _advance_sequences(writing)
        return copied
    finally:
        src.close()
        dst.close()


def _refuse_unless_empty(dst: SqlCore) -> None:
    for table in schema.metadata.sorted_tables:
        rows = int(dst._scalar(sa.select(sa.func.count()).select_from(table)) or 0)
        if rows > SEED_ROWS.get(table.name, 0):
            raise MoveRefused(
                f"the target database is not empty ({rows} rows in {table.name}):"
                " move into a new, empty database"
            )


class _snapshot:
    """One consistent read of the whole source."""

    def __init__(self, core: SqlCore) -> None:
        self.core = core
        self.conn: Connection | None = None

    def __enter__(self) -> Connection:
        if self.core.dialect == "sqlite":
            self.tx = self.core._tx()
            return self.tx.__enter__()
        self.conn = self.core.engine.connect().execution_options(isolation_level="REPEATABLE READ")
        self.conn.begin()
        return self.conn

    def __exit__(self, *exc: object) -> None:
        if self.conn is None:
            self.tx.__exit__(None, None, None)  # the read changed nothing: commit
            return
        self.conn.rollback()
        self.conn.close()


def _copy_table(reading: Connection, writing: Connection, table: sa.Table) -> int:
    order = list(table.primary_key.columns) or list(table.columns)
    result = reading.execution_options(yield_per=CHUNK).execute(sa.select(table).order_by(*order))
    total = 0
    for chunk in result.mappings().partitions(CHUNK):
        writing.execute(sa.insert(table), [dict(row) for row in chunk])
        total += len(chunk)
    return total


def _advance_sequences(writing: Connection) -> None:
    """Make the next id PostgreSQL assigns follow the largest one copied."""
    for table in schema.metadata.sorted_tables:
        for column in table.primary_key.columns:
            if column.autoincrement is not True:
                continue
            writing.execute(
                sa.text(
                    "SELECT setval(pg_get_serial_sequence(:t, :c),"
                    f" COALESCE((SELECT MAX({column.name}) FROM {table.name}), 0) + 1, false)"
                ),
                {"t": table.name, "c": column.name},
            )

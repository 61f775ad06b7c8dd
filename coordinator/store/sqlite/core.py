"""The SQLite engine's core: one connection in WAL mode, transactions, faults.

Every method that changes state runs in one transaction and returns only after
COMMIT with `synchronous=FULL`: what a caller acknowledges is on disk, so `kill -9`
(or a power cut) loses nothing acknowledged. The aggregate modules (`machines`,
`units`, `tokens`, `deploy`, `reports`) build on `SqliteCore`; the connection never
leaves this package.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TypeVar

import msgspec

from coordinator.store.health import StorageHealth
from coordinator.store.ports import StorageError, StorageUnavailable
from coordinator.store.sqlite.migrations import MIGRATIONS

R = TypeVar("R")

REVOCATION_CACHE_S = 1.0
"""How long `is_serial_revoked` trusts an answer it read (every API request and agent
connection asks). This process's own revocations clear the cache at once; the bound is
for a revocation written by another process sharing the file."""
REVOCATION_CACHE_MAX = 4096

SQLITE_IOERR = 10
SQLITE_FULL = 13


def storage_fault(exc: BaseException) -> str | None:
    """Which fault: "full" (no space left), "io" (the disk fails) or None (any other error): the two
    faults that are the machine's, not the request's, and pass once an operator acts."""
    if isinstance(exc, sqlite3.Error):
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        text = str(exc)
        if code == SQLITE_FULL or "database or disk is full" in text:
            return "full"
        if code == SQLITE_IOERR or "disk I/O error" in text:
            return "io"
        return None
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return "full"
        if exc.errno == errno.EIO:
            return "io"
    return None


class SqliteCore:
    """Two SQLite connections shared by the event loop thread and the threads long
    writes run in (`asyncio.to_thread`).

    Writes (and reads inside a write's transaction) use the writer connection under
    `_lock`, held from BEGIN to COMMIT: a transaction is never joined by another
    thread's statements. Reads outside a transaction use the reader connection
    (WAL: they see the last committed state and never wait for a writer), so a long
    write in a thread does not stall reads on the event loop."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.health = StorageHealth()
        self._lock = threading.RLock()
        self._writing = threading.local()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._revocations: dict[str, tuple[bool, float]] = {}
        """serial -> (revoked, when read, monotonic): see REVOCATION_CACHE_S."""
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._reader.row_factory = sqlite3.Row
        self._reader.execute("PRAGMA busy_timeout=5000")
        self._reader.execute("PRAGMA query_only=ON")
        self._migrate()

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()

    @property
    def schema_version(self) -> int:
        row = self._one("PRAGMA user_version")
        assert row is not None
        return int(row[0])

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """The connection a read uses: the writer's inside this thread's transaction
        (it must see its own writes), else the reader (the last committed state)."""
        if getattr(self._writing, "depth", 0):
            yield self._db
            return
        with self._read_lock:
            yield self._reader

    def _all(self, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
        """Every row of one query (never a cursor that outlives the lock)."""
        with self._read() as db:
            return db.execute(sql, args).fetchall()

    def _one(self, sql: str, args: Sequence[object] = ()) -> sqlite3.Row | None:
        """The first row of one query."""
        with self._read() as db:
            row: sqlite3.Row | None = db.execute(sql, args).fetchone()
            return row

    def _migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise StorageError(
                f"database schema version {current} is newer than this coordinator "
                f"understands ({len(MIGRATIONS)}); upgrade the coordinator"
            )
        if current == len(MIGRATIONS):
            return
        # SQLite's way to rebuild a table others reference: foreign keys off (outside
        # any transaction) while a migration runs, checked before it commits.
        self._db.execute("PRAGMA foreign_keys=OFF")
        try:
            for version in range(current + 1, len(MIGRATIONS) + 1):
                with self._tx() as db:
                    for statement in MIGRATIONS[version - 1].split(";"):
                        if statement.strip():
                            db.execute(statement)
                    broken = db.execute("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise StorageError(
                            f"migration {version} left {len(broken)} broken reference(s),"
                            f" first in table {broken[0][0]!r}"
                        )
                    db.execute(f"PRAGMA user_version={version}")
        finally:
            self._db.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction; nested uses join the outer one (see `batch`).

        A failed COMMIT is rolled back too (else every later write would join a
        transaction that never ends); a full or failing disk raises StorageUnavailable.
        The lock is held from BEGIN to COMMIT: another thread waits for the whole
        transaction (it is re-entrant, so the thread that holds it joins).
        """
        with self._lock:
            self._writing.depth = getattr(self._writing, "depth", 0) + 1
            try:
                if self._db.in_transaction:
                    yield self._db
                    return
                yield from self._begin_commit()
            finally:
                self._writing.depth -= 1

    def _begin_commit(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back already
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            kind = storage_fault(exc)
            if kind is None:
                raise
            self.health.failed(kind, str(exc))
            raise StorageUnavailable(kind, str(exc)) from exc
        self.health.ok()

    def probe(self) -> bool:
        """Try a one-page write (the header's user_version, unchanged): whether the
        storage takes writes again when nothing else is waiting to be written."""
        try:
            with self._tx() as db:
                db.execute(f"PRAGMA user_version={int(self.schema_version)}")
        except StorageUnavailable:
            return False
        return True

    def batch(self) -> AbstractContextManager[sqlite3.Connection]:
        """Group many writes into one transaction (one fsync)."""
        return self._tx()

    @property
    def db(self) -> sqlite3.Connection:
        """The raw connection: for this engine's modules and its fault-injection tests
        only. It is on no port, so no service can reach it."""
        return self._db


def _bump(db: sqlite3.Connection, machine_ids: set[str]) -> None:
    db.executemany(
        "UPDATE machines SET desired_revision=desired_revision+1 WHERE id=?",
        [(m,) for m in sorted(machine_ids)],
    )


def _record_issued(
    db: sqlite3.Connection, serial: str, machine_id: str, now: float, not_after: float
) -> None:
    db.execute(
        "INSERT INTO issued_certs (serial, machine_id, issued_at, not_after) VALUES (?, ?, ?, ?)",
        (serial, machine_id, now, not_after),
    )


def row_record(row: sqlite3.Row, kind: type[R]) -> R:
    """A row whose columns are named like the Struct's fields (extra columns ignored,
    SQLite's 0/1 read as booleans)."""
    return msgspec.convert(dict(zip(row.keys(), row, strict=True)), kind, strict=False)

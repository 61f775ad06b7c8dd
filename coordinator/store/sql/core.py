"""The store's core on SQLAlchemy Core, for SQLite and PostgreSQL: connections,
transactions, faults, migrations.

Every method that changes state runs in one transaction and returns only after
COMMIT: on SQLite with `synchronous=FULL` in WAL mode, on PostgreSQL with its own
durable commit. What a caller acknowledges is on disk, so `kill -9` (or a power cut)
loses nothing acknowledged. The aggregate modules (`machines`, `units`, `tokens`,
`deploy`, `reports`...) build on `SqlCore` with statements over `schema`'s tables; no
connection leaves this package.

Writes in one process are serialised by one lock held from BEGIN to COMMIT (a
transaction is never joined by another thread's statements, and the read-then-write
logic of the modules sees no interleaving from this process). Between coordinators
sharing PostgreSQL, correctness comes from constraints (a second insert of a name is
a conflict), from single-statement updates, and from the lease that lets one
coordinator alone run the singleton work (scheduling, rollouts, liveness).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine, Row, RowMapping

from coordinator.errors import Conflict, Invalid
from coordinator.store.health import StorageHealth
from coordinator.store.ports import StorageError, StorageUnavailable
from coordinator.store.scope import SETTING, TENANT_SCOPE
from coordinator.store.sql import migrate, schema

R = TypeVar("R")
T = TypeVar("T")

REVOCATION_CACHE_S = 1.0
"""How long `is_serial_revoked` trusts an answer it read (every API request and agent
connection asks). This process's own revocations clear the cache at once; the bound is
for a revocation written by another process (or coordinator) sharing the database."""
REVOCATION_CACHE_MAX = 4096

SQLITE_IOERR = 10
SQLITE_FULL = 13
PG_DISK_FULL = "53100"
PG_OUT_OF_MEMORY = "53200"
PG_IO_ERROR = "58030"

log = logging.getLogger("coordinator.storage")


def database_url(target: Path | str) -> str:
    """A SQLAlchemy URL for a path (an SQLite file) or a URL as given; a bare
    `postgresql://` URL gets the psycopg (3) driver. Pure."""
    text = str(target)
    if "://" not in text:
        return f"sqlite:///{text}"
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


def describe(target: Path | str) -> str:
    """The database for people and logs: the URL without its password. Pure."""
    url = sa.engine.make_url(database_url(target))
    if url.drivername.startswith("sqlite"):
        return f"SQLite {url.database}"
    return url.render_as_string(hide_password=True)


def status(target: Path | str) -> tuple[str | None, str]:
    """The schema revision of the database (None: empty) and this coordinator's newest,
    changing nothing; StorageError if the database cannot be reached."""
    engine = make_engine(database_url(target))
    try:
        with engine.connect() as conn:
            return migrate.status(conn)
    except exc.DBAPIError as exc_:
        raise StorageError(f"cannot read the database: {exc_.orig or exc_}") from exc_
    finally:
        engine.dispose()


def storage_fault(exc_: BaseException) -> str | None:
    """Which fault: "full" (no space left), "io" (the disk fails), "unreachable" (the
    database server cannot be reached) or None (any other error): the faults that are
    the machine's, not the request's, and pass once an operator acts."""
    if isinstance(exc_, exc.DBAPIError):
        if exc_.connection_invalidated and exc_.orig is None:
            return "unreachable"
        inner = exc_.orig
        if inner is None:
            return None
        kind = storage_fault(inner)
        if kind is None and exc_.connection_invalidated:
            return "unreachable"
        return kind
    if isinstance(exc_, sqlite3.Error):
        code = (getattr(exc_, "sqlite_errorcode", None) or 0) & 0xFF
        text = str(exc_)
        if code == SQLITE_FULL or "database or disk is full" in text:
            return "full"
        if code == SQLITE_IOERR or "disk I/O error" in text:
            return "io"
        return None
    sqlstate = getattr(exc_, "sqlstate", None)
    if isinstance(sqlstate, str):
        if sqlstate in (PG_DISK_FULL, PG_OUT_OF_MEMORY):
            return "full"
        if sqlstate == PG_IO_ERROR:
            return "io"
        if sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03"):
            return "unreachable"  # connection exceptions, admin/crash shutdown
        return None
    if any(
        c.__name__ == "OperationalError" and c.__module__.startswith("psycopg")
        for c in type(exc_).__mro__
    ):  # psycopg's "connection failed", its ConnectionTimeout, link.LinkSilent: no SQLSTATE
        return "unreachable"
    if isinstance(exc_, OSError):
        if exc_.errno in (errno.ENOSPC, errno.EDQUOT):
            return "full"
        if exc_.errno == errno.EIO:
            return "io"
    return None


def on_loop() -> bool:
    """Whether this thread runs an event loop (a wait here stalls everything on it)."""
    return asyncio._get_running_loop() is not None


def _changes(conn: Connection) -> int | None:
    """SQLite's count of rows changed on this connection (None on PostgreSQL)."""
    raw = conn.connection.dbapi_connection
    return raw.total_changes if isinstance(raw, sqlite3.Connection) else None


class Breaker:
    """Whether an engine's PostgreSQL link is known silent (`link`): while it is, no
    connection is made and the store refuses every call at once (503), and a thread
    probes the server every PROBE_EVERY_S until it answers again. Tripped in `link`, by
    a wait or a connection that outlived the server's answering; one per engine."""

    def __init__(self, on_clear: Callable[[], None] = lambda: None) -> None:
        self.silent = ""
        """Why the link is known silent (empty: it is not)."""
        self.probe: Callable[[], bool] = lambda: True
        """Whether the server answers again (set by `make_engine`)."""
        self._on_clear = on_clear
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def trip(self, detail: str) -> None:
        with self._lock:
            if self.silent or self._closed.is_set():
                return
            self.silent = detail or "the database does not answer"
        log.error("the database does not answer (%s): refusing its work until it does", detail)
        threading.Thread(target=self._probe, name="moorage-store-probe", daemon=True).start()

    def close(self) -> None:
        self._closed.set()

    def _probe(self) -> None:
        started = time.monotonic()
        while not self._closed.wait(PROBE_EVERY_S):
            if self.probe():
                with self._lock:
                    self.silent = ""
                log.warning("the database answers again (after %.1f s)", time.monotonic() - started)
                self._on_clear()
                return


def make_engine(url: str, breaker: Breaker | None = None) -> Engine:
    """The engine for one database: SQLite with WAL, FULL sync and foreign keys on each
    connection, BEGIN IMMEDIATE for the writer (the pysqlite driver's own transaction
    handling is turned off, as SQLAlchemy's documentation advises); PostgreSQL through
    psycopg 3 with a small pool."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 5.0}, poolclass=sa.NullPool
        )

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            for pragma in (
                "journal_mode=WAL",
                "synchronous=FULL",
                "foreign_keys=ON",
                "busy_timeout=5000",
            ):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            if conn.info.get("moorage.role") == "writer":
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    from coordinator.store.sql import link  # psycopg: only a PostgreSQL store loads it

    engine = sa.create_engine(
        url,
        pool_size=4,
        max_overflow=4,
        pool_timeout=POOL_WAIT_S,
        connect_args=PG_LINK_LIMITS,
    )

    watch = breaker or Breaker()
    _, params = engine.dialect.create_connect_args(engine.url)
    watch.probe = lambda: link.answers(dict(params))

    @event.listens_for(engine, "do_connect")
    def _open(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> Any:
        """Every pooled connection is a `link.WatchedConnection` (no wait outlives the
        server's answering; a connection made on the event loop gives up sooner)."""
        return link.WatchedConnection.open(dict(cparams), watch)

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        """A connection that sat idle may have been cut (server restart, idle timeout):
        it is pinged first and, if dead, replaced by the pool (DisconnectionError). Not
        one in use moments ago: SQLAlchemy's pre-ping on every checkout doubled the
        round trips of every read (a fifth of the hub's time in a reconnect wave)."""
        since = record.info.get(IDLE_SINCE)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as failed:
            raise exc.DisconnectionError(str(failed)) from failed
        if not alive:
            raise exc.DisconnectionError("ping failed")

    return engine


PG_LINK_LIMITS: dict[str, Any] = {
    "tcp_user_timeout": 5000,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
}
"""libpq's bounds on a PostgreSQL link whose packets are dropped (a partition, a host
gone), without which a read waits for TCP's own retransmissions, ~15 minutes: a request
whose bytes the server's kernel has not acknowledged within 5 s fails
(`tcp_user_timeout`: a busy server still acknowledges at once, so a slow query is not
cut); an idle pooled connection is found dead within ~19 s. A link held open and silent
(a proxy acknowledges the bytes) is `link`'s to end; connection attempts are bounded
there too (`link.WatchedConnection.open`)."""

POOL_WAIT_S = 5.0
"""How long a caller waits for a pooled PostgreSQL connection when all are in use
(SQLAlchemy's default is 30 s): each is released within its own wait's bounds
(`link`), so a longer wait means a storm, and a 503 is the better answer."""
LOOP_LOCK_WAIT_S = 1.0
"""How long a thread's write may have held the write lock before a write on the event
loop stops waiting for it (PostgreSQL only: that thread may be waiting on a silent
link, up to `link`'s bounds); past it the loop's write is refused (503, "busy")
rather than the loop stalled."""
PROBE_EVERY_S = 0.5
"""While the link is silent, how often the store asks whether PostgreSQL answers again."""

IDLE_SINCE = "moorage.idle_since"
PING_AFTER_IDLE_S = 1.0
"""A pooled PostgreSQL connection idle this long is pinged before use (see make_engine)."""


def _refuse_value(error: exc.DBAPIError) -> None:
    """A value the database cannot hold (PostgreSQL: text with a NUL character, a number
    out of range; SQLite takes both) is the request's fault: Invalid (400) naming it,
    never a 500."""
    if isinstance(error, exc.DataError):
        detail = str(error.orig or error).splitlines()[0]
        raise Invalid(f"a value the database cannot store: {detail}") from error


def _scope(conn: Connection) -> None:
    """Give a PostgreSQL connection the current request's tenant (`moorage.tenant`, read
    by the row-level security policies), only when it differs from what the connection
    already has: pooled connections keep their session settings between uses."""
    wanted = TENANT_SCOPE.get() or ""
    if conn.info.get(SETTING, "") != wanted:
        conn.execute(sa.select(sa.func.set_config(SETTING, wanted, False)))
        conn.info[SETTING] = wanted


class Prepared:
    """An INSERT ... ON CONFLICT compiled once, run through the driver.

    SQLAlchemy gives ON CONFLICT statements no cache key (either engine), so it compiles
    them again on every execution: a third of the CPU of a fleet `PUT /units/x` went to
    compiling its unit upsert. Hot statements are compiled here once per store for a
    fixed set of columns and executed with `exec_driver_sql` (one row, or the driver's
    executemany), each value through its type's bind processor as SQLAlchemy would.
    """

    def __init__(self, stmt: Any, dialect: sa.Dialect, keys: Sequence[str]) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
        self.sql = str(compiled)
        self.keys = tuple(keys)
        self.order: tuple[str, ...] | None = (
            tuple(compiled.positiontup or ()) if compiled.positional else None
        )
        processors: dict[str, Any] = dict(compiled._bind_processors)
        unknown = set(self.order or processors) - set(self.keys)
        if unknown:
            raise StorageError(f"prepared statement binds {sorted(unknown)}, not given")
        self.processors = processors

    def run(self, db: Connection, rows: Sequence[dict[str, Any]]) -> None:
        p = self.processors
        names = self.order if self.order is not None else self.keys
        values = [[p[k](row[k]) if k in p else row[k] for k in names] for row in rows]
        params: list[Any] = (
            [tuple(v) for v in values]
            if self.order is not None
            else [dict(zip(names, v, strict=True)) for v in values]
        )
        db.exec_driver_sql(self.sql, params[0] if len(params) == 1 else params)


class SqlCore:
    """The store's connections and transactions over one database (an SQLite file or
    a PostgreSQL database).

    SQLite: two connections shared by the event loop thread and the threads long writes
    run in (`asyncio.to_thread`). Writes (and reads inside a write's transaction) use
    the writer under `_lock`; reads outside a transaction use the reader (WAL: the last
    committed state, never waiting for a writer), so a long write in a thread does not
    stall reads on the event loop. PostgreSQL: the same lock, connections from a pool.
    """

    def __init__(self, target: Path | str) -> None:
        self.url = database_url(target)
        self.path = str(target) if "://" not in str(target) else ""
        self.health = StorageHealth()
        self.breaker = Breaker(on_clear=self._link_back)
        self.engine = make_engine(self.url, self.breaker)
        self.dialect = self.engine.dialect.name
        """"sqlite" or "postgresql": for the few statements that differ (`insert`)."""
        self._lock = threading.RLock()
        self._held_since: float | None = None
        """When the outermost write holding `_lock` took it (PostgreSQL; monotonic)."""
        self._local = threading.local()
        self._revocations: dict[str, tuple[bool, float]] = {}
        """serial -> (revoked, when read, monotonic): see REVOCATION_CACHE_S."""
        self._read_lock = threading.Lock()
        self._writer: Connection | None = None
        self._reader: Connection | None = None
        if self.dialect == "sqlite":
            self._writer = self.engine.connect()
            self._writer.info["moorage.role"] = "writer"
            self._reader = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._reader.exec_driver_sql("PRAGMA query_only=ON")
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.breaker.close()
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
        with self._lock:
            if self._writer is not None:
                self._writer.close()
        self.engine.dispose()

    @property
    def schema_version(self) -> str:
        """The Alembic revision the database is at."""
        with self._read() as db:
            return migrate.current_revision(db) or ""

    def _migrate(self) -> None:
        """Bring the schema to this coordinator's head (see `migrate`), refusing a
        database a newer coordinator has already changed."""
        with self.engine.connect() as conn:
            try:
                migrate.upgrade(conn)
            except migrate.TooNew as exc_:
                raise StorageError(str(exc_)) from exc_

    # -- reads -----------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """The connection a read uses: the writer's inside this thread's transaction
        (it must see its own writes), else the reader (the last committed state)."""
        inside = getattr(self._local, "conn", None)
        if inside is not None:
            yield inside
            return
        if self._reader is not None:
            with self._read_lock:
                yield self._reader
            return
        self._gate()
        try:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                _scope(conn)
                yield conn
        except exc.DBAPIError as exc_:
            self._fault(exc_)
            raise
        except exc.TimeoutError as exc_:
            raise self._busy(f"no free database connection within {POOL_WAIT_S:g} s") from exc_
        self._link_back()  # a round trip made: it is reachable again

    def _rows(self, stmt: sa.Executable, params: Any = None) -> Sequence[Row[Any]]:
        """Every row of one query (never a result that outlives the connection)."""
        with self._read() as db:
            return db.execute(stmt, params).all()

    def _maps(self, stmt: sa.Executable, params: Any = None) -> Sequence[RowMapping]:
        """Every row of one query as a mapping (column name -> value)."""
        with self._read() as db:
            return db.execute(stmt, params).mappings().all()

    def _first(self, stmt: sa.Executable, params: Any = None) -> RowMapping | None:
        """The first row of one query as a mapping, or None."""
        with self._read() as db:
            return db.execute(stmt, params).mappings().first()

    def _scalar(self, stmt: sa.Executable, params: Any = None) -> Any:
        """The first column of the first row (None when there is no row)."""
        with self._read() as db:
            return db.execute(stmt, params).scalar()

    # -- writes ----------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One transaction; nested uses join the outer one (see `batch`).

        A failed COMMIT is rolled back too (else every later write would join a
        transaction that never ends); a full or failing disk, or a database that cannot
        be reached, raises StorageUnavailable. The lock is held from BEGIN to COMMIT:
        another thread waits for the whole transaction (it is re-entrant, so the thread
        that holds it joins).
        """
        inside = getattr(self._local, "conn", None)
        if inside is not None:
            with self._lock:
                yield inside
            return
        with self._write_lock():
            try:
                conn = self._writer if self._writer is not None else self.engine.connect()
                if self.dialect == "postgresql":
                    _scope(conn)  # before BEGIN: `_begin_commit` commits what it autobegan
            except exc.DBAPIError as exc_:
                self._fault(exc_)
                raise
            except exc.TimeoutError as exc_:
                raise self._busy(f"no free database connection within {POOL_WAIT_S:g} s") from exc_
            try:
                self._local.conn = conn
                yield from self._begin_commit(conn)
            finally:
                self._local.conn = None
                if conn is not self._writer:
                    conn.close()

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        """The write lock, for an outermost transaction. On PostgreSQL a write on the
        event loop waits for it only until the holder has held it LOOP_LOCK_WAIT_S (the
        thread holding it may be waiting on a silent link: the loop pays that at most
        once per holder), and none is begun while the link is known silent."""
        if self.dialect != "postgresql":
            with self._lock:
                yield
            return
        self._gate()
        if on_loop():
            since = self._held_since
            held = 0.0 if since is None else time.monotonic() - since
            got = self._lock.acquire(timeout=max(0.001, LOOP_LOCK_WAIT_S - held))
        else:
            got = self._lock.acquire()
        if not got:
            raise self._busy(f"another write held the database for {LOOP_LOCK_WAIT_S:g} s")
        self._held_since = time.monotonic()
        try:
            self._gate()
            yield
        finally:
            self._held_since = None
            self._lock.release()

    # -- a silent PostgreSQL link --------------------------------------------------

    def _gate(self) -> None:
        """Fail at once while the PostgreSQL link is known silent: every statement
        sent down it would wait out `link`'s bounds first (on the event loop, stalling
        everything) to fail the same way."""
        silent = self.breaker.silent
        if silent:
            raise StorageUnavailable("unreachable", silent)

    def _busy(self, detail: str) -> StorageUnavailable:
        """A 503 for a store too busy to take this call in time (no fault recorded: the
        database answers, a caller is just not waited for)."""
        return StorageUnavailable("busy", detail)

    def _begin_commit(self, conn: Connection) -> Iterator[Connection]:
        if conn.in_transaction():  # autobegun by a raw statement outside any `_tx`
            conn.commit()
        before = _changes(conn)
        try:
            try:
                with conn.begin():
                    self._check_fence(conn)
                    yield conn
            except BaseException:
                if conn.in_transaction():
                    with contextlib.suppress(exc.SQLAlchemyError, sqlite3.Error):
                        conn.rollback()
                raise
        except (exc.DBAPIError, sqlite3.Error, OSError) as exc_:
            self._fault(exc_)
            raise
        if before is None or _changes(conn) != before:
            self.health.ok()
        # else: a transaction that wrote nothing (SQLite) proves nothing about a disk
        # that was full; the next real write (or the probe) says whether it is back.

    def _check_fence(self, conn: Connection) -> None:
        """First thing in each outermost transaction: refuse it when it is made for
        singleton work whose lease is lost (`coordinator.store.fence`; `ClusterSql`)."""

    def _link_back(self) -> None:
        """The database answered again: an unreachable fault is over (full or failing
        storage is not: a read proves nothing about writes)."""
        if self.health.fault == "unreachable":
            self.health.ok()

    def _fault(self, exc_: BaseException) -> None:
        """Raise StorageUnavailable for a fault of the storage itself (else return:
        the caller re-raises the error, which is the request's)."""
        if isinstance(exc_, exc.DBAPIError):
            _refuse_value(exc_)
        kind = storage_fault(exc_)
        if kind is None:
            return
        detail = str(getattr(exc_, "orig", None) or exc_)
        self.health.failed(kind, detail)
        raise StorageUnavailable(kind, detail) from exc_

    def probe(self) -> bool:
        """Try a small write (the Alembic revision row, unchanged): whether the storage
        takes writes again when nothing else is waiting to be written."""
        try:
            with self._tx() as db:
                migrate.touch(db)
        except StorageUnavailable:
            return False
        return True

    def batch(self) -> AbstractContextManager[Connection]:
        """Group many writes into one transaction (one fsync)."""
        return self._tx()

    @property
    def db(self) -> Connection:
        """A raw connection (the writer's on SQLite): for this engine's modules and its
        fault-injection tests only. It is on no port, so no service can reach it."""
        if self._writer is not None:
            return self._writer
        raise StorageError("a PostgreSQL store has no single raw connection")

    def _insert(self, table: sa.Table) -> Any:
        """An INSERT for this engine, with `on_conflict_do_nothing` and
        `on_conflict_do_update(index_elements=..., set_=...)` (both engines spell them
        the same; `.excluded` names the row that was not inserted)."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql  # not loaded by a SQLite store

            return postgresql.insert(table)
        return sqlite_dialect.insert(table)

    def _prepare(self, stmt: Any, keys: Sequence[str]) -> Prepared:
        """`stmt` (an INSERT ... ON CONFLICT) compiled once for this engine, for rows
        with exactly `keys`: see `Prepared`."""
        return Prepared(stmt, self.engine.dialect, keys)

    def _contains(self, column: sa.ColumnElement[str], text: str) -> sa.ColumnElement[bool]:
        """`column` contains `text`, case-sensitively and with no wildcard characters
        (SQLite's instr, PostgreSQL's strpos)."""
        found: sa.ColumnElement[int] = (
            sa.func.strpos(column, text)
            if self.dialect == "postgresql"
            else sa.func.instr(column, text)
        )
        return found > 0

    def _greatest(self, a: Any, b: Any) -> sa.ColumnElement[Any]:
        """The larger of two values (SQLite's two-argument max, PostgreSQL's greatest)."""
        if self.dialect == "postgresql":
            return sa.func.greatest(a, b)
        return sa.func.max(a, b)


@contextmanager
def unique_name(message: str) -> Iterator[None]:
    """A unique name taken between the check and the write (another coordinator on the
    same database, whose insert committed first) is the same Conflict the check gives."""
    try:
        yield
    except exc.IntegrityError as exc_:
        if not unique_violation(exc_):
            raise
        raise Conflict(message) from exc_


def unique_violation(error: exc.IntegrityError) -> bool:
    """A UNIQUE constraint failed (not a foreign key or NOT NULL): PostgreSQL's SQLSTATE
    23505, SQLite's message. Pure."""
    return getattr(error.orig, "sqlstate", None) == "23505" or "UNIQUE constraint" in str(
        error.orig
    )


IN_CHUNK = 1000
"""Values per IN list: far below PostgreSQL's 65,535 parameters per statement."""


def in_chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of at most `size`, for IN lists. Pure."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def revision_floor(now: float) -> int:
    """The least revision a change made at `now` gets: the wall clock in milliseconds.

    Revisions only go up, but a database restored from a backup goes back to older
    ones while agents hold newer: counting on by one from there would, after as many
    changes as were lost, give an agent's revision to different content, and the
    agent, holding "that revision", would never be sent it (found by the fault
    suite's restore scenario). Taken from the clock, a revision made after a restore
    is above any made before it. Well below 2**53 (JSON's integers) for millennia."""
    return int(now * 1000)


def bump(db: Connection, machine_ids: set[str]) -> None:
    """Raise each machine's desired revision (its agent has something to fetch): by one,
    and at least to `revision_floor` of now; and tell the other coordinators in the
    same transaction (`notify_machines`)."""
    if not machine_ids:
        return
    m = schema.machines
    following = m.c.desired_revision + 1
    floor = sa.literal(revision_floor(time.time()), schema.Int)
    db.execute(
        sa.update(m)
        .where(m.c.id == sa.bindparam("mid"))
        .values(desired_revision=sa.case((following > floor, following), else_=floor)),
        [{"mid": mid} for mid in sorted(machine_ids)],
    )
    notify_machines(db, machine_ids)


CHANGES_CHANNEL = "moorage_machines"
"""The PostgreSQL channel every coordinator LISTENs on (`notify.ChangeFeedSql`)."""
NOTIFY_PAYLOAD_MAX = 7900
"""PostgreSQL refuses a payload of 8000 bytes or more: ids are sent in batches below."""


def notify_payloads(machine_ids: set[str] | list[str]) -> list[str]:
    """Machine ids as space-separated payloads, each under NOTIFY_PAYLOAD_MAX bytes (an
    id is at most 64 ASCII characters without spaces). Pure."""
    out: list[str] = []
    current: list[str] = []
    size = 0
    for mid in sorted(set(machine_ids)):
        if current and size + 1 + len(mid) > NOTIFY_PAYLOAD_MAX:
            out.append(" ".join(current))
            current, size = [], 0
        current.append(mid)
        size += len(mid) + (1 if size else 0)
    if current:
        out.append(" ".join(current))
    return out


def notify_machines(db: Connection, machine_ids: set[str] | list[str]) -> None:
    """NOTIFY the machines' ids on CHANGES_CHANNEL inside `db`'s transaction: PostgreSQL
    delivers it only on COMMIT, so a listener never reads state older than the news.
    SQLite: nothing (one coordinator; its services push in process)."""
    if db.dialect.name != "postgresql":
        return
    for payload in notify_payloads(machine_ids):
        db.execute(sa.select(sa.func.pg_notify(CHANGES_CHANNEL, payload)))


def record_issued(
    db: Connection, serial: str, machine_id: str, now: float, not_after: float
) -> None:
    db.execute(
        sa.insert(schema.issued_certs).values(
            serial=serial, machine_id=machine_id, issued_at=now, not_after=not_after
        )
    )


def row_record(row: RowMapping | Row[Any], kind: type[R]) -> R:
    """A row whose columns are named like the Struct's fields (extra columns ignored,
    0/1 read as booleans)."""
    mapping = row._mapping if isinstance(row, Row) else row
    # str(): SQLAlchemy names columns with `quoted_name`, a str subclass msgspec refuses
    return msgspec.convert({str(k): v for k, v in mapping.items()}, kind, strict=False)

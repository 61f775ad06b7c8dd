"""Which database a test's coordinator runs on (#23): SQLite files by default;
`MOORAGE_TEST_DATABASE=postgresql` runs every coordinator the tests make (in process
and as a process) on PostgreSQL instead: one private cluster for the whole session
(`tests.harness.postgres.PgCluster`), a new empty database per store.

Store tests that must hold on both engines take the `engine` fixture
(tests/unit/coordinator/store/conftest.py), which runs them once on each.
"""

from __future__ import annotations

import atexit
import itertools
import os
import threading
from pathlib import Path

from coordinator.store.sql import SqlStore
from tests.harness.postgres import PgCluster, postgres_available

ENGINES = ("sqlite", "postgresql")
_lock = threading.Lock()
_cluster: PgCluster | None = None
_names = itertools.count(1)


def default_engine() -> str:
    """The engine of this test run: `MOORAGE_TEST_DATABASE` (sqlite or postgresql)."""
    engine = os.environ.get("MOORAGE_TEST_DATABASE", "sqlite") or "sqlite"
    if engine not in ENGINES:
        raise RuntimeError(f"MOORAGE_TEST_DATABASE={engine!r}: one of {', '.join(ENGINES)}")
    return engine


def cluster() -> PgCluster:
    """The session's PostgreSQL cluster, started on first use, stopped at exit."""
    global _cluster
    with _lock:
        if _cluster is None:
            missing = postgres_available()
            if missing:
                raise RuntimeError(f"PostgreSQL tests need a server: {missing}")
            made = PgCluster()
            made.start()
            atexit.register(made.stop)
            _cluster = made
        return _cluster


def stop_cluster() -> None:
    """Stop the session's cluster (pytest's session end; atexit is the fallback)."""
    global _cluster
    with _lock:
        if _cluster is not None:
            _cluster.stop()
            _cluster = None


def fresh_database(tmp_path: Path, engine: str | None = None) -> str:
    """A new empty database for one store: an SQLite file in `tmp_path`, or a new
    PostgreSQL database's URL."""
    engine = engine or default_engine()
    if engine == "sqlite":
        tmp_path.mkdir(parents=True, exist_ok=True)
        return str(tmp_path / f"moorage-{next(_names)}.db")
    return cluster().create_database(f"t{os.getpid()}_{next(_names)}")


def coordinator_database_url(tmp_path: Path) -> str:
    """`CoordinatorConfig.database_url` for a test's coordinator: "" (the SQLite file
    in its state directory) by default, a new PostgreSQL database with
    `MOORAGE_TEST_DATABASE=postgresql`."""
    if default_engine() == "sqlite":
        return ""
    return fresh_database(tmp_path, "postgresql")


def open_test_store(tmp_path: Path, engine: str | None = None) -> SqlStore:
    """A store on a fresh database of the run's (or the given) engine."""
    return SqlStore(fresh_database(tmp_path, engine))


def dump_database(target: str) -> str:
    """Every row of every table of a database (SQLite file or PostgreSQL URL) as text:
    for tests that a secret is never stored in clear, on either engine."""
    import sqlalchemy as sa

    from coordinator.store.sql import database_url, schema

    engine = sa.create_engine(database_url(target))
    try:
        with engine.connect() as conn:
            lines = [
                f"{table.name}: {tuple(row)}"
                for table in schema.metadata.sorted_tables
                for row in conn.execute(sa.select(table))
            ]
    finally:
        engine.dispose()
    return "\n".join(lines)

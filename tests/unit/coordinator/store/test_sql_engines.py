"""The core on both engines: a fresh database is at the newest revision, reopening
changes nothing, a database a newer coordinator migrated is refused, faults of the
server are named."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from coordinator.store.ports import StorageError
from coordinator.store.sql import SqlStore, database_url, schema
from coordinator.store.sql.migrate import head


def test_fresh_database_is_at_head_and_reopens(
    new_store: Callable[..., SqlStore], new_database: Callable[[], str]
) -> None:
    target = new_database()
    first = new_store(target)
    assert first.schema_version == head()
    with first.batch() as db:
        db.execute(sa.insert(schema.tenants).values(name="acme", created_at=1.0))
    first.close()
    again = new_store(target)
    assert again.schema_version == head()
    assert again._scalar(sa.select(schema.tenants.c.name).where(schema.tenants.c.name == "acme"))
    # the seed rows of the baseline: the default tenant and its built-in group
    assert again._scalar(sa.select(sa.func.count()).select_from(schema.machine_groups)) == 1


def test_a_database_migrated_by_a_newer_coordinator_is_refused(
    new_store: Callable[..., SqlStore], new_database: Callable[[], str]
) -> None:
    target = new_database()
    store = new_store(target)
    with store.batch() as db:
        db.execute(sa.text("UPDATE alembic_version SET version_num='9999_future'"))
    with pytest.raises(StorageError, match="newer than this coordinator"):
        SqlStore(target)


def test_a_failed_transaction_leaves_nothing_and_the_next_one_works(store: SqlStore) -> None:
    with pytest.raises(sa.exc.IntegrityError), store.batch() as db:
        db.execute(sa.insert(schema.tenants).values(name="a", created_at=1.0))
        db.execute(sa.insert(schema.tenants).values(name="a", created_at=2.0))
    assert store._scalar(sa.select(sa.func.count()).select_from(schema.tenants)) == 1
    with store.batch() as db:
        db.execute(sa.insert(schema.tenants).values(name="a", created_at=1.0))
    assert store._scalar(sa.select(sa.func.count()).select_from(schema.tenants)) == 2
    assert store.probe()


def test_text_sorts_bytewise_on_both_engines(store: SqlStore) -> None:
    names = ["b", "B", "a-b", "a_b", "a.b", "Z", "é", "ab"]
    with store.batch() as db:
        for name in names:
            db.execute(sa.insert(schema.tenants).values(name=name, created_at=0.0))
    got = store._rows(sa.select(schema.tenants.c.name).order_by(schema.tenants.c.name))
    assert [r[0] for r in got] == sorted([*names, "default"], key=lambda n: n.encode())


def test_database_url() -> None:
    assert database_url("/var/lib/moorage/moorage.db") == "sqlite:////var/lib/moorage/moorage.db"
    assert database_url("postgresql://u@h:5432/d") == "postgresql+psycopg://u@h:5432/d"
    assert database_url("postgresql+psycopg://u@h/d") == "postgresql+psycopg://u@h/d"


class _PgError(Exception):
    """What psycopg raises: an error carrying its SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "fault"),
    [("53100", "full"), ("58030", "io"), ("08006", "unreachable"), ("57P01", "unreachable")],
)
def test_postgresql_faults_of_the_server_are_named(sqlstate: str, fault: str) -> None:
    from coordinator.store.sql import storage_fault

    assert storage_fault(_PgError(sqlstate)) == fault
    wrapped = sa.exc.OperationalError("SELECT 1", {}, _PgError(sqlstate))
    assert storage_fault(wrapped) == fault


def test_an_error_of_the_request_is_not_a_fault() -> None:
    from coordinator.store.sql import storage_fault

    assert storage_fault(_PgError("23505")) is None  # a unique violation


def test_a_value_the_database_cannot_hold_is_invalid_not_a_crash(store: SqlStore) -> None:
    from coordinator.errors import Invalid

    try:
        with store.batch() as db:
            db.execute(sa.insert(schema.tenants).values(name="nul\x00here", created_at=0.0))
    except Invalid as exc:
        assert "cannot store" in str(exc)  # PostgreSQL: text holds no NUL
    else:
        assert store.dialect == "sqlite"  # SQLite stores it

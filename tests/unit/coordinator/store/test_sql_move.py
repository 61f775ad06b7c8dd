"""Moving a coordinator's SQLite database into an empty PostgreSQL one: every row of
every table, ids continuing after the copied ones, and a target that is not empty
refused untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from coordinator.store.sql import SqlStore, schema
from coordinator.store.sql.move import MoveRefused, move_database
from tests.harness.databases import fresh_database
from tests.harness.postgres import postgres_available

pytestmark = pytest.mark.skipif(postgres_available() is not None, reason="needs PostgreSQL")


def _fill(store: SqlStore) -> None:
    with store.batch() as db:
        db.execute(sa.insert(schema.tenants).values(name="acme", created_at=5.0))
        for i in range(3):
            db.execute(
                sa.insert(schema.users).values(
                    username=f"u{i}", password_hash="h", created_at=float(i)
                )
            )
        db.execute(
            sa.insert(schema.task_logs),
            [{"run_id": "r", "offset": n * 10, "data": b"x" * 10} for n in range(5000)],
        )


def test_sqlite_to_postgresql_moves_every_row_and_ids_continue(tmp_path: Path) -> None:
    source = fresh_database(tmp_path, "sqlite")
    store = SqlStore(source)
    _fill(store)
    store.close()
    target = fresh_database(tmp_path, "postgresql")
    seen: list[str] = []
    copied = move_database(source, target, lambda table, rows: seen.append(table))
    assert copied["users"] == 3 and copied["task_logs"] == 5000 and copied["tenants"] == 2
    assert set(seen) == set(schema.metadata.tables)
    moved = SqlStore(target)
    try:
        names = moved._rows(sa.select(schema.tenants.c.name).order_by(schema.tenants.c.name))
        assert [r[0] for r in names] == ["acme", "default"]
        with moved.batch() as db:
            new = db.execute(
                sa.insert(schema.users).values(username="next", password_hash="h", created_at=9.0)
            ).inserted_primary_key
        assert new is not None and new[0] == 4  # after the copied 1..3
        total = moved._scalar(sa.select(sa.func.sum(sa.func.length(schema.task_logs.c.data))))
        assert total == 50_000
    finally:
        moved.close()


def test_a_target_that_is_not_empty_is_refused_and_left_alone(tmp_path: Path) -> None:
    source = fresh_database(tmp_path, "sqlite")
    SqlStore(source).close()
    target = fresh_database(tmp_path, "postgresql")
    store = SqlStore(target)
    _fill(store)
    store.close()
    with pytest.raises(MoveRefused, match="not empty"):
        move_database(source, target)
    after = SqlStore(target)
    try:
        assert after._scalar(sa.select(sa.func.count()).select_from(schema.users)) == 3
    finally:
        after.close()


def test_the_same_database_is_refused(tmp_path: Path) -> None:
    source = fresh_database(tmp_path, "sqlite")
    with pytest.raises(MoveRefused, match="same database"):
        move_database(source, source)

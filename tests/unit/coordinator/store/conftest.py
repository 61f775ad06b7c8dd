"""Store tests that must hold on both engines take `engine` (or `new_store`): each
runs once on SQLite and once on PostgreSQL (a private cluster for the session)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.store.sql import SqlStore
from tests.harness.databases import ENGINES, fresh_database
from tests.harness.postgres import postgres_available


@pytest.fixture(autouse=True)
def revisions_count_by_one(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many tests here count bumps (each change raises a revision by one); in production
    revisions also jump to the clock (`core.revision_floor`), which
    `test_a_revision_made_after_a_restore_is_above_every_older_one` tests on its own."""
    if "real_revision_floor" not in request.keywords:
        monkeypatch.setattr("coordinator.store.sql.core.revision_floor", lambda now: 0)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "postgresql":
        missing = postgres_available()
        if missing:
            pytest.skip(missing)
    return name


@pytest.fixture
def new_database(tmp_path: Path, engine: str) -> Callable[[], str]:
    """Makes a new empty database of `engine` (a path or a URL) each call."""
    return lambda: fresh_database(tmp_path / "db", engine)


@pytest.fixture
def new_store(new_database: Callable[[], str]) -> Iterator[Callable[..., SqlStore]]:
    """Opens a store: on a new database, or on `target` (to reopen one); every store it
    opened is closed after the test."""
    opened: list[SqlStore] = []

    def make(target: str | None = None) -> SqlStore:
        store = SqlStore(target or new_database())
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(new_store: Callable[..., SqlStore]) -> SqlStore:
    """A store on a new database of `engine`."""
    return new_store()

"""PostgreSQL's pool: a connection cut while idle (a server restart, an idle timeout)
is pinged and replaced on checkout, never handed to a read; one in use moments ago is
not pinged (a round trip per read saved; see core.make_engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.store.ports import StorageUnavailable
from coordinator.store.sql import SqlStore, core
from tests.harness.databases import cluster, fresh_database
from tests.harness.postgres import postgres_available

pytestmark = pytest.mark.skipif(postgres_available() is not None, reason="no PostgreSQL")


def _cut(store: SqlStore) -> None:
    """Terminate every server process serving this store's database."""
    name = store.url.rsplit("/", 1)[1]
    cluster().psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        f" WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )


def test_an_idle_connection_cut_by_the_server_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqlStore(fresh_database(tmp_path, "postgresql"))
    try:
        assert store.list_machines() == []  # one connection now in the pool
        _cut(store)
        monkeypatch.setattr(core, "PING_AFTER_IDLE_S", 0.0)  # it has been idle long enough
        assert store.list_machines() == []
    finally:
        store.close()


def test_a_connection_used_moments_ago_is_not_pinged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqlStore(fresh_database(tmp_path, "postgresql"))
    try:
        assert store.list_machines() == []
        _cut(store)
        monkeypatch.setattr(core, "PING_AFTER_IDLE_S", 3600.0)
        with pytest.raises(StorageUnavailable):  # the cut is met by the read itself
            store.list_machines()
        assert store.list_machines() == []  # and the pool has replaced it
    finally:
        store.close()


def test_a_read_that_gets_through_ends_an_unreachable_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coordinator that met a cut lets its agents go while its database is unreachable
    (`Hub.let_go`): the first round trip that gets through says it is back, not only the
    next write (a few seconds later)."""
    store = SqlStore(fresh_database(tmp_path, "postgresql"))
    try:
        assert store.list_machines() == []
        _cut(store)
        monkeypatch.setattr(core, "PING_AFTER_IDLE_S", 3600.0)
        with pytest.raises(StorageUnavailable):
            store.list_machines()
        assert store.health.fault == "unreachable"
        assert store.list_machines() == []
        assert store.health.fault == ""
    finally:
        store.close()

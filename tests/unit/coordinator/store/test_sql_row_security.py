"""The second tenancy wall on PostgreSQL (#23): with the request's tenant in scope, the
database itself shows and accepts only that tenant's rows, whatever the query asks;
unscoped work (scheduling, agents, admins) sees every row. SQLite has no such wall."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from coordinator.store.scope import TENANT_SCOPE
from coordinator.store.sql import SqlStore, schema

units = schema.units


@contextmanager
def scoped(tenant: str | None) -> Iterator[None]:
    token = TENANT_SCOPE.set(tenant)
    try:
        yield
    finally:
        TENANT_SCOPE.reset(token)


def _unit(tenant: str, name: str) -> dict[str, object]:
    return {
        "tenant": tenant,
        "name": name,
        "options": "[]",
        "hash": "h",
        "desired_state": "launched",
        "created_at": 1.0,
        "updated_at": 1.0,
    }


def _names(store: SqlStore) -> list[tuple[str, str]]:
    rows = store._rows(sa.select(units.c.tenant, units.c.name).order_by(units.c.tenant))
    return [(r[0], r[1]) for r in rows]


def test_a_scoped_connection_sees_and_writes_only_its_tenant(engine: str, store: SqlStore) -> None:
    if engine != "postgresql":
        pytest.skip("row-level security is PostgreSQL's")
    with store.batch() as db:
        db.execute(sa.insert(units), [_unit("acme", "a.service"), _unit("globex", "g.service")])
    with scoped("acme"):
        assert _names(store) == [("acme", "a.service")]  # no WHERE tenant=... in the query
        with store.batch() as db:  # writes too: globex's row is not there to change
            changed = db.execute(sa.update(units).values(hash="x")).rowcount
        assert changed == 1
        refused = pytest.raises(sa.exc.ProgrammingError, match="row-level security")
        with refused, store.batch() as db:
            db.execute(sa.insert(units).values(_unit("globex", "sneaky.service")))
    with scoped(None):  # pooled connections drop the previous request's tenant
        assert _names(store) == [("acme", "a.service"), ("globex", "g.service")]
    assert store._scalar(sa.select(units.c.hash).where(units.c.tenant == "globex")) == "h"


def test_scopes_do_not_leak_between_pooled_connections(engine: str, store: SqlStore) -> None:
    if engine != "postgresql":
        pytest.skip("row-level security is PostgreSQL's")
    with store.batch() as db:
        db.execute(sa.insert(units), [_unit("acme", "a.service"), _unit("globex", "g.service")])
    for _ in range(10):
        with scoped("globex"):
            assert _names(store) == [("globex", "g.service")]
        assert len(_names(store)) == 2
        with store.batch() as db:  # an unscoped write after a scoped read
            assert db.execute(sa.update(units).values(pinned=0)).rowcount == 2

"""The SQL store satisfies every store port: statically (mypy checks the typed
assignments below) and at runtime (`runtime_checkable` isinstance), so a service
typed against a port can be handed the engine the composition root picks."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.app import open_store
from coordinator.config import CoordinatorConfig
from coordinator.store import ports
from coordinator.store.sql import SqlStore
from tests.harness.databases import open_test_store

PORTS: tuple[type, ...] = (
    ports.StoreAdmin,
    ports.MachineStore,
    ports.UnitStore,
    ports.TokenStore,
    ports.DeploymentStore,
    ports.ReportStore,
    ports.FleetStore,
    ports.TrustStore,
    ports.SessionStore,
    ports.TransactionalDeploymentStore,
    ports.Store,
    ports.ChangeFeed,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    """A store on the run's engine (MOORAGE_TEST_DATABASE)."""
    opened = open_test_store(tmp_path)
    yield opened
    opened.close()


def test_the_sql_store_satisfies_every_port_statically(store: SqlStore) -> None:
    admin: ports.StoreAdmin = store
    machines: ports.MachineStore = store
    units: ports.UnitStore = store
    tokens: ports.TokenStore = store
    deploy: ports.DeploymentStore = store
    reports: ports.ReportStore = store
    fleet: ports.FleetStore = store
    trust: ports.TrustStore = store
    session: ports.SessionStore = store
    deploy_tx: ports.TransactionalDeploymentStore = store
    everything: ports.Store = store
    assert {id(p) for p in (admin, machines, units, tokens, deploy, reports)} == {id(store)}
    assert {id(p) for p in (fleet, trust, session, deploy_tx, everything)} == {id(store)}


@pytest.mark.parametrize("port", PORTS, ids=lambda p: p.__name__)
def test_the_sql_store_satisfies_every_port_at_runtime(store: SqlStore, port: type) -> None:
    assert isinstance(store, port)


def test_the_composition_root_opens_a_store_with_every_port(tmp_path: Path) -> None:
    store = open_store(CoordinatorConfig(state_dir=str(tmp_path)))
    try:
        assert isinstance(store, ports.Store)
        assert store.list_machines() == []
    finally:
        store.close()


def test_every_public_engine_method_is_on_a_port() -> None:
    """A method only the engine has is one a second engine would not: services could
    not use it through the ports, so it is either on a port or private."""
    on_ports = {name for port in PORTS for name in dir(port) if not name.startswith("_")}
    engine = {name for name in dir(SqlStore) if not name.startswith("_")}
    # `db` is the raw connection for the engine's own fault-injection tests;
    # `targeted_machines` is the deploy module's cache behind `machine_targets`.
    assert engine - on_ports == {"db", "targeted_machines"}


def test_only_the_store_imports_a_database_driver() -> None:
    root = Path(__file__).resolve().parents[4]
    offenders = []
    for package in ("coordinator", "agent", "proto"):
        for path in (root / package).rglob("*.py"):
            if (root / "coordinator" / "store") in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if any(n.split(".")[0] in {"sqlite3", "psycopg", "asyncpg"} for n in names):
                    offenders.append(str(path.relative_to(root)))
    assert offenders == []

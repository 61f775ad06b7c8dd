"""Pytest fixtures that start real components; import them into a conftest or a test module.

    from tests.harness.fixtures import dockerd, user_systemd  # noqa: F401

Each fixture skips the test (with the reason) when the machine cannot run the component,
and always tears it down, also when the test or the start-up fails.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .dockerd import Dockerd, dockerd_available
from .postgres import PgCluster, postgres_available
from .systemd import UserSystemd, systemd_available


def _user_systemd() -> Iterator[UserSystemd]:
    reason = systemd_available()
    if reason is not None:
        pytest.skip(f"real systemd --user unavailable: {reason}")
    manager = UserSystemd()
    try:
        manager.start()
        yield manager
    finally:
        manager.stop()


def _dockerd() -> Iterator[Dockerd]:
    reason = dockerd_available()
    if reason is not None:
        pytest.skip(f"real dockerd unavailable: {reason}")
    daemon = Dockerd()
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def user_systemd() -> Iterator[UserSystemd]:
    """A fresh private ``systemd --user`` with journald, for one test."""
    yield from _user_systemd()


@pytest.fixture(scope="session")
def user_systemd_session() -> Iterator[UserSystemd]:
    """One private ``systemd --user`` shared by the session (tests must clean their units)."""
    yield from _user_systemd()


@pytest.fixture
def dockerd() -> Iterator[Dockerd]:
    """A fresh private dockerd, for one test."""
    yield from _dockerd()


@pytest.fixture(scope="session")
def dockerd_session() -> Iterator[Dockerd]:
    """One private dockerd shared by the session (tests must clean their containers)."""
    yield from _dockerd()


def _postgres() -> Iterator[PgCluster]:
    reason = postgres_available()
    if reason is not None:
        pytest.skip(f"real PostgreSQL unavailable: {reason}")
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster on a loopback port, for one test."""
    yield from _postgres()

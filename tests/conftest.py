from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import AgentProc, CoordinatorProc


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[CoordinatorProc]:
    proc = CoordinatorProc(tmp_path / "coordinator")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[AgentProc]]:
    """Agents the test creates are appended here and always stopped."""
    made: list[AgentProc] = []
    try:
        yield made
    finally:
        for agent in made:
            agent.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the session's PostgreSQL cluster, if a test started one."""
    from tests.harness.databases import stop_cluster

    stop_cluster()

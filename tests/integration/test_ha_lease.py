"""Several coordinators on one database (#23): two real coordinator processes sharing
the database and the fleet CA. Both answer the API; exactly one leads (singleton
work), which /readyz and the `moorage_coordinator_leader` gauge show; `kill -9` of the
leader and the other leads within the lease's TTL plus one renewal.

On PostgreSQL (the deployment #23 is for; skipped while store modules are still on
SQLite-only SQL) and on one SQLite file shared by both processes (the same lease,
fencing and failover, through SQLite's own locking)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.databases import fresh_database
from tests.harness.postgres import postgres_available
from tests.integration.test_ha_notify import share_ca, transitional_modules
from tests.procs import GENEROUS_LIMITS, CoordinatorProc, wait_for

pytestmark = pytest.mark.integration

TTL = 4.0
RENEW = 1.0
SLACK = 1.5
"""Process scheduling, and the poll of the readiness probe."""


def _database(kind: str, tmp_path: Path) -> str:
    """The database both coordinators are given."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    missing = postgres_available()
    if missing:
        pytest.skip(missing)
    waiting = transitional_modules()
    if waiting:
        pytest.skip(f"store modules not yet on Core statements: {', '.join(waiting)}")
    return fresh_database(tmp_path / "db", "postgresql")


@pytest.fixture(params=["sqlite", "postgresql"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[CoordinatorProc]]:
    url = _database(request.param, tmp_path)
    procs = [CoordinatorProc(tmp_path / "a"), CoordinatorProc(tmp_path / "b")]
    for proc in procs:
        proc.database_url = url
        proc.config = f"lease_ttl_s = {TTL}\nlease_renew_s = {RENEW}\n{GENEROUS_LIMITS}"
    first, second = procs
    try:
        first.start()
        share_ca(first.state_dir / "pki", second.state_dir / "pki")
        second.start()
        yield procs
    finally:
        for proc in procs:
            if proc.proc is not None and proc.proc.alive():
                proc.stop()


def _ready(proc: CoordinatorProc) -> dict[str, Any]:
    status, body = proc.raw("GET", "/readyz", cert=False)
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def _leaders(procs: list[CoordinatorProc]) -> list[CoordinatorProc]:
    return [p for p in procs if _ready(p)["leader"]]


def _units(proc: CoordinatorProc) -> set[str]:
    return {u["name"] for u in proc.api("GET", "/moorage/v1/units")["units"]}


def _gauge(proc: CoordinatorProc, name: str) -> float:
    for line in proc.metrics().splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_two_coordinators_one_leader_and_kill9_hands_over(pair: list[CoordinatorProc]) -> None:
    first, second = pair
    assert Path(first.paths.ca_cert).read_bytes() == Path(second.paths.ca_cert).read_bytes()
    ids = {_ready(p)["coordinator"] for p in pair}
    assert len(ids) == 2  # each its own id (generated once into its state directory)

    # both serve the API, over one database: what one writes, the other reads
    unit = {
        "options": [{"section": "Service", "name": "ExecStart", "value": "/bin/true"}],
        "desired_state": "inactive",
    }
    first.api("PUT", "/moorage/v1/units/shared.service", unit)
    assert "shared.service" in _units(second)

    # exactly one leads, and keeps leading while it renews
    wait_for(lambda: len(_leaders(pair)) == 1, timeout=TTL, what="one leader")
    leader = _leaders(pair)[0]
    other = second if leader is first else first
    epoch = _gauge(leader, "moorage_coordinator_lease_epoch")
    for _ in range(6):
        assert _leaders(pair) == [leader]
        time.sleep(RENEW / 2)
    assert _gauge(leader, "moorage_coordinator_leader") == 1.0
    assert _gauge(other, "moorage_coordinator_leader") == 0.0
    assert _gauge(other, "moorage_coordinator_lease_epoch") == 0.0

    # kill -9 of the leader: the other takes over within TTL + one renewal
    killed = time.monotonic()
    leader.kill9()
    wait_for(
        lambda: _ready(other)["leader"], timeout=TTL + RENEW + SLACK, interval=0.1, what="takeover"
    )
    took = time.monotonic() - killed
    assert took <= TTL + RENEW + SLACK
    assert _gauge(other, "moorage_coordinator_lease_epoch") > epoch
    assert "shared.service" in _units(other)

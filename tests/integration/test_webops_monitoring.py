"""WebOps monitoring (#21) end to end: a real agent (on a real systemd manager)
reports its machine's load; the coordinator's monitoring API shows it and keeps it as
a series."""

# ruff: noqa: F811  (pytest fixtures imported by name)

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.fixtures import user_systemd  # noqa: F401
from tests.harness.systemd import UserSystemd
from tests.procs import MachineRig, wait_for


@pytest.fixture
def rig(tmp_path: Path, user_systemd: UserSystemd) -> Iterator[MachineRig]:
    r = MachineRig(tmp_path, extra=user_systemd.agent_flags(), env=user_systemd.agent_env())
    try:
        yield r
    finally:
        r.close()


def test_agents_report_machine_health_and_series(rig: MachineRig) -> None:
    made = rig.coordinator.api("POST", "/moorage/v1/api-tokens", {"name": "mon", "unlimited": True})
    headers = {"Authorization": f"Bearer {made['token']}"}

    def get(path: str) -> Any:
        status, raw = rig.coordinator.raw("GET", path, headers=headers, cert=False)
        assert status == 200, raw
        return json.loads(raw)["data"]

    def reported() -> dict[str, Any] | None:
        machines = get("/api/v1/monitoring/health/")["machines"]
        mine = [x for x in machines if x["id"] == "m1"]
        return mine[0] if mine and mine[0]["reported_at"] else None

    m1 = wait_for(reported, 60, interval=0.5, what="m1's stats")
    assert m1["connected"] and m1["memory"]["total"] > 0 and m1["disk"]["total"] > 0
    assert m1["uptime_seconds"] > 0 and len(m1["load"]) == 3 and m1["cpus"] >= 1
    points = get("/api/v1/monitoring/metrics/?period=1h&machine=m1")["points"]
    assert points and points[-1]["machine"] == "m1" and points[-1]["memory_percent"] > 0


def test_system_logs_are_the_services_journal(rig: MachineRig) -> None:
    # A service standing in for the machine's redis (the test manager has none): its
    # journal, read by the agent, is what /logs/system/?type=redis answers.
    rig.put(
        "redis-server.service",
        "[Service]\nExecStart=/bin/sh -c 'echo Ready to accept connections; exec sleep 600'\n",
    )
    rig.wait_state("redis-server.service", "active", timeout=60)
    made = rig.coordinator.api(
        "POST", "/moorage/v1/api-tokens", {"name": "logs", "unlimited": True}
    )
    headers = {"Authorization": f"Bearer {made['token']}"}

    def get(path: str) -> tuple[int, Any]:
        status, raw = rig.coordinator.raw("GET", path, headers=headers, cert=False)
        return status, json.loads(raw)

    def logged() -> list[str] | None:
        status, body = get("/api/v1/logs/system/?type=redis&lines=20")
        assert status == 200, body
        lines = [x["message"] for x in body["data"]["logs"]]
        return lines if any("Ready to accept" in x for x in lines) else None

    wait_for(logged, 60, interval=0.5, what="the service's journal")
    status, body = get("/api/v1/logs/system/?type=sshd")
    assert status == 400 and "type must be one of" in body["error"]["message"]
    status, body = get("/api/v1/logs/system/?type=redis&machine=nope")
    assert status == 404
    status, body = get("/api/v1/logs/system/?type=redis&follow=maybe")
    assert status == 400 and "follow must be true or false" in body["error"]["message"]

    # follow=true: NDJSON lines, the last ones, then new ones as the service writes them
    later = threading.Timer(
        1.0,
        lambda: rig.put(
            "redis-server.service",
            "[Service]\nExecStart=/bin/sh -c 'echo Ready again; exec sleep 600'\n",
        ),
    )
    later.start()
    status, lines = rig.coordinator.raw_stream(
        "/api/v1/logs/system/?type=redis&lines=5&follow=true&machine=" + rig.agent.machine_id,
        max_lines=50,
        timeout=20,
        until=b"Ready again",
    )
    later.join()
    assert status == 200
    items = [json.loads(line) for line in lines]
    assert set(items[0]) == {"timestamp", "message"}
    assert any("Ready to accept" in i["message"] for i in items)
    assert "Ready again" in items[-1]["message"]

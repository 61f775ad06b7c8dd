"""WebOps monitoring (#21): the agent's parsing of /proc, the downsampling of the
per-minute series, and the API over a real store (samples put in it directly; the
end-to-end path from a real agent is tests/integration/test_webops_monitoring.py)."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent import hoststats
from coordinator.config import CoordinatorConfig
from coordinator.server import Coordinator
from coordinator.webops.monitoring import downsample
from coordinator.webops.records import Sample, WebDeployment
from proto import messages as m

Client = TestClient[web.Request, web.Application]


def test_proc_parsing_is_pure() -> None:
    before = hoststats.cpu_times("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    after = hoststats.cpu_times("cpu  150 0 150 900 0 0 0 0 0 0\n")
    assert before == (200, 1000) and after == (300, 1200)
    assert hoststats.cpu_percent(before, after) == 50.0
    assert hoststats.cpu_percent((0, 0), after) == 0.0  # no previous read
    total, used = hoststats.memory("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 400 kB\n")
    assert (total, used) == (1024000, 614400)
    assert hoststats.loads("0.50 0.25 0.10 1/100 42\n") == (0.5, 0.25, 0.1)
    assert hoststats.loads("") == (0.0, 0.0, 0.0)
    assert hoststats.uptime("1234.5 99.0\n") == 1234.5
    stats, _ = hoststats.sample((0, 0), Path("/"))  # this machine, really
    assert stats.memory_total > 0 and stats.disk_total > 0 and stats.uptime_s > 0


def test_downsampling_averages_per_machine_and_bucket() -> None:
    def s(machine: str, minute: int, cpu: float) -> Sample:
        return Sample(
            machine_id=machine,
            minute=minute,
            cpu_percent=cpu,
            memory_total=100,
            memory_used=int(cpu),
            disk_total=10,
            disk_used=5,
        )

    points = downsample([s("a", 0, 10), s("a", 4, 30), s("a", 5, 50), s("b", 1, 70)], 300)
    assert [(p.machine, p.timestamp, p.cpu_percent, p.samples) for p in points] == [
        ("a", 0.0, 20.0, 2),
        ("a", 300.0, 50.0, 1),
        ("b", 0.0, 70.0, 1),
    ]
    assert points[0].memory_percent == 20.0 and points[0].disk_percent == 50.0


@pytest.fixture
async def served(
    tmp_path: Path, database_url: str
) -> AsyncIterator[tuple[Client, dict[str, str], Coordinator]]:
    coordinator = Coordinator(
        CoordinatorConfig(state_dir=str(tmp_path / "state"), database_url=database_url)
    )
    token, _ = coordinator.tokens.create_api_token("test", unlimited=True)
    client = TestClient(TestServer(coordinator.api_app()))
    await client.start_server()
    try:
        yield client, {"Authorization": f"Bearer {token}"}, coordinator
    finally:
        await client.close()
        coordinator.storage.close()


async def test_metrics_errors_and_export(
    served: tuple[Client, dict[str, str], Coordinator],
) -> None:
    client, auth, coordinator = served
    now_minute = int(time.time() // 60)
    for i in range(120):  # two hours of one sample a minute
        coordinator.storage.sample_put(
            Sample(
                machine_id="m1",
                minute=now_minute - 119 + i,
                cpu_percent=float(i % 10),
                load1=0.5,
                memory_total=1000,
                memory_used=250,
                disk_total=100,
                disk_used=40,
                uptime_s=1000.0 + i,
            ),
            now_minute - 43200,
        )
    resp = await client.get("/api/v1/monitoring/metrics/?period=1h", headers=auth)
    assert resp.status == 200, await resp.text()
    data = (await resp.json())["data"]
    assert data["bucket_seconds"] == 60 and 60 <= len(data["points"]) <= 61
    assert data["points"][0]["memory_percent"] == 25.0
    resp = await client.get("/api/v1/monitoring/metrics/?period=24h", headers=auth)
    points = (await resp.json())["data"]["points"]
    assert sum(p["samples"] for p in points) == 120 and len(points) <= 10
    resp = await client.get("/api/v1/monitoring/metrics/?period=2y", headers=auth)
    assert resp.status == 400 and "period" in (await resp.json())["error"]["message"]

    resp = await client.get("/api/v1/monitoring/export/?period=24h&format=csv", headers=auth)
    assert resp.status == 200 and "Content-Length" not in resp.headers
    rows = list(csv.reader(io.StringIO((await resp.read()).decode())))
    assert rows[0][0] == "machine" and sum(int(r[-1]) for r in rows[1:]) == 120
    resp = await client.get("/api/v1/monitoring/export/?period=1h&format=json", headers=auth)
    assert len(json.loads(await resp.read())) >= 60

    dep = coordinator.storage.webops_create(
        WebDeployment(tenant="default", name="site", repo_url="file:///r", created_at=1.0)
    )
    coordinator.storage.webops_log(dep.id, "info", "fine", 10.0)
    coordinator.storage.webops_log(dep.id, "error", "build b1 failed: npm", 20.0)
    coordinator.storage.webops_log(dep.id, "warning", "slow", 30.0)
    resp = await client.get("/api/v1/monitoring/errors/", headers=auth)
    got = await resp.json()
    assert [e["message"] for e in got["data"]] == ["slow", "build b1 failed: npm"]
    assert got["pagination"]["total"] == 2
    resp = await client.get("/api/v1/monitoring/errors/?level=error&search=NPM", headers=auth)
    assert [e["deployment"] for e in (await resp.json())["data"]] == ["site"]
    resp = await client.get("/api/v1/monitoring/errors/?since=25", headers=auth)
    assert [e["level"] for e in (await resp.json())["data"]] == ["warning"]
    resp = await client.get("/api/v1/monitoring/errors/?level=info", headers=auth)
    assert [e["message"] for e in (await resp.json())["data"]] == ["fine"]
    resp = await client.get("/api/v1/monitoring/errors/?level=debug", headers=auth)
    assert resp.status == 400

    coordinator.monitoring.latest["m1"] = (
        m.MachineStats(at=time.time(), cpu_percent=12.5, memory_total=1000, memory_used=500),
        time.time(),
    )
    resp = await client.get("/api/v1/monitoring/health/", headers=auth)
    health = (await resp.json())["data"]
    assert health["deployments"]["total"] == 1 and health["services"]["total"] == 0
    assert health["machines"] == []  # m1 is not an enrolled machine of the tenant
